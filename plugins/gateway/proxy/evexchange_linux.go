//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/plugd/plugd/plugins/gateway/breaker"
	"golang.org/x/sys/unix"
)

// exchange is one request of a client, from routing to the end of its
// answer, across attempts on upstream instances.
type exchange struct {
	c        *evClient
	active   bool
	gen      uint64 // counts requests; a dial result for another is moot
	s        *Service
	sn       *snapshot
	key      string
	method   string
	idem     bool
	reqClose bool
	start    time.Time
	req      []byte // the request as sent upstream
	hashKey  string
	skip     uint64
	attempts int
	retried  bool // resent on a new connection after a stale one

	u      *Upstream
	done   func(error)
	up     *evUp
	reused bool
	gotAny bool      // answer bytes arrived on this attempt
	sentAt time.Time // this attempt's request went out (loop clock)

	headSent bool
	status   int
	mode     bodyMode
	left     int64
	cs       chunkScan
	upClose  bool
	paused   bool
}

type bodyMode uint8

const (
	bodyNone bodyMode = iota
	bodyLength
	bodyChunked
	bodyUntilClose
)

func (ex *exchange) begin(r *http.Request, s *Service, sn *snapshot, key string, start time.Time) {
	ex.gen++
	req := ex.req
	*ex = exchange{c: ex.c, gen: ex.gen, active: true, s: s, sn: sn, key: key, method: r.Method,
		idem: idempotent(r.Method), reqClose: r.Close, start: start, req: req}
}

// dispatch picks an instance and sends the request to it.
func (ex *exchange) dispatch() {
	sn := ex.sn
	for {
		idx := sn.bal.Pick(ex.hashKey, ex.skip)
		if idx < 0 {
			ex.fail(http.StatusServiceUnavailable, "service "+strconv.Quote(ex.key)+" has no available instance")
			return
		}
		if idx < 64 {
			ex.skip |= 1 << uint(idx)
		}
		u := sn.ups[idx]
		done, err := u.admit()
		if err != nil { // opened or half-open quota used since Pick
			continue
		}
		u.inflight.Add(1)
		ex.u, ex.done, ex.retried = u, done, false
		ex.attempts++
		ex.connect(false)
		return
	}
}

func (ex *exchange) connect(fresh bool) {
	l := ex.c.l
	p := l.pool(ex.u.pool.Load())
	if !fresh {
		if up := p.take(); up != nil {
			ex.reused = true
			ex.send(up)
			return
		}
	}
	ex.reused = false
	l.dial(p, ex)
}

func (ex *exchange) send(up *evUp) {
	ex.up, ex.gotAny, ex.sentAt = up, false, ex.c.l.now
	up.ex = ex
	up.out, up.sent = ex.req, 0
	if up.in == nil {
		up.in = ex.c.l.getBuf()
	}
	up.flush()
}

// fail ends the exchange with an error answer (nothing was sent yet).
func (ex *exchange) fail(status int, msg string) {
	c := ex.c
	ex.active = false
	c.respond(&http.Request{Method: ex.method, Close: ex.reqClose}, status, msg, "")
	ex.s.m.observe(status, time.Since(ex.start))
	c.last = c.l.now
	c.advance()
}

// transportErr handles a failed attempt: the upstream connection failed
// (dial, write, reset, closed before the answer ended).
func (ex *exchange) transportErr(err error, dialErr bool) {
	if up := ex.up; up != nil {
		up.ex, ex.up = nil, nil
		up.close()
	}
	if ex.headSent {
		// the client's answer is cut off: its connection must close
		ex.u.inflight.Add(-1)
		ex.s.m.observe(ex.status, time.Since(ex.start))
		ex.active = false
		ex.c.abort(err)
		return
	}
	if ex.reused && !ex.gotAny && !ex.retried && !dialErr {
		// the upstream closed the kept-alive connection while it was idle
		ex.retried = true
		ex.connect(true)
		return
	}
	ex.u.inflight.Add(-1)
	ex.u.report(ex.done, err)
	if ex.attempts <= ex.sn.retries && (dialErr || ex.idem) {
		ex.s.m.retries.Add(1)
		ex.dispatch()
		return
	}
	ex.fail(http.StatusBadGateway, failedMsg(ex.u, ex.key, err))
}

// noAnswer ends an attempt whose upstream did not begin its answer within
// the service's response_header_timeout (see loop.sweep): the connection is
// closed, which cancels the request there, the breaker counts a failure,
// and an idempotent request goes to another instance while retries last.
func (ex *exchange) noAnswer() {
	up := ex.up
	up.ex, ex.up = nil, nil
	up.close()
	ex.u.inflight.Add(-1)
	ex.u.report(ex.done, errNoAnswer)
	if ex.attempts <= ex.sn.retries && ex.idem {
		ex.s.m.retries.Add(1)
		ex.dispatch()
		return
	}
	ex.fail(http.StatusGatewayTimeout, noAnswerMsg(ex.u, ex.key, ex.sn.respTO))
}

// awaitsAnswer reports whether the exchange's upstream is past its
// response_header_timeout without having sent a complete head.
func (ex *exchange) awaitsAnswer(now time.Time) bool {
	return ex.active && ex.up != nil && !ex.headSent && ex.sn.respTO > 0 && now.Sub(ex.sentAt) > ex.sn.respTO
}

// clientGone: the client closed or reset its connection while the
// answer was pending. The upstream connection is closed, which cancels
// the request there; the request counts as 499, as nginx counts it.
func (ex *exchange) clientGone() {
	c := ex.c
	if up := ex.up; up != nil {
		up.ex, ex.up = nil, nil
		up.close()
	}
	if ex.u != nil {
		ex.u.inflight.Add(-1)
		if !ex.headSent {
			ex.u.report(ex.done, breaker.ErrExcluded)
		}
	}
	status := ex.status
	if !ex.headSent {
		status = 499
	}
	ex.s.m.observe(status, time.Since(ex.start))
	ex.active = false
	ex.gen++
	c.close()
}

// readAnswer reads and relays what the upstream sent.
func (ex *exchange) readAnswer() {
	for ex.active && ex.up != nil && ex.up.readable && !ex.paused {
		up := ex.up
		if cap(up.in)-len(up.in) < 512 {
			if ex.headSent || cap(up.in) >= maxEvHead {
				ex.relay() // make room
				if !ex.active || ex.up != up {
					return // the exchange moved on
				}
				if cap(up.in)-len(up.in) < 512 {
					ex.transportErr(errors.New("upstream answer head too large"), false)
					return
				}
			} else {
				up.in = append(make([]byte, 0, 2*cap(up.in)), up.in...)
			}
		}
		room := up.in[len(up.in):cap(up.in)]
		n, err := rawRead(up.fd, room)
		switch {
		case err == 0 && n > 0:
			up.in = up.in[:len(up.in)+n]
			if n < len(room) && !up.hup {
				up.readable = false
			}
			ex.gotAny = true
			ex.relay()
		case err == 0: // EOF
			up.readable = false
			if ex.headSent && ex.mode == bodyUntilClose {
				ex.upClose = true
				ex.finish()
				return
			}
			if ex.gotAny && !ex.headSent {
				ex.transportErr(io.ErrUnexpectedEOF, false)
			} else {
				ex.transportErr(io.EOF, false)
			}
			return
		case err == unix.EAGAIN:
			up.readable = false
		case err == unix.EINTR:
		default:
			ex.transportErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", err)}, false)
			return
		}
	}
}

// relay turns what the upstream sent into the client's answer: the head
// once it is complete, then the body as it arrives.
func (ex *exchange) relay() {
	up, c := ex.up, ex.c
	for !ex.headSent {
		i := bytes.Index(up.in, crlf2)
		if i < 0 {
			return
		}
		if !ex.answerHead(up.in[:i+4]) {
			return
		}
	}
	if len(up.in) > 0 {
		switch ex.mode {
		case bodyLength:
			k := int(min(int64(len(up.in)), ex.left))
			c.out = append(c.out, up.in[:k]...)
			ex.left -= int64(k)
			up.consume(k)
			if ex.left == 0 && len(up.in) > 0 {
				ex.upClose = true // bytes beyond the answer: do not reuse
				up.in = up.in[:0]
			}
		case bodyChunked:
			n, done, err := ex.cs.scan(up.in)
			if err != nil {
				ex.transportErr(err, false)
				return
			}
			c.out = append(c.out, up.in[:n]...)
			up.consume(n)
			if done {
				ex.left = 0
				if len(up.in) > 0 {
					ex.upClose = true
					up.in = up.in[:0]
				}
			}
		case bodyUntilClose:
			c.out = append(c.out, up.in...)
			up.in = up.in[:0]
		default:
			ex.upClose = true // an answer without body has no bytes after its head
			up.in = up.in[:0]
		}
	}
	if ex.mode != bodyUntilClose && ex.left == 0 {
		ex.finish()
		return
	}
	if !c.flush() {
		return
	}
	if c.pending() > maxEvOut {
		ex.paused = true // until the client has read it (see flush)
		c.l.s.pauses.Add(1)
	}
}

// answerHead handles a complete answer head: 1xx are dropped, a 502, 503
// or 504 may be retried, else the head goes to the client. false: the
// exchange moved on (retried, failed) or waits for the next head.
func (ex *exchange) answerHead(head []byte) bool {
	up, c := ex.up, ex.c
	rr := &c.l.rr // scratch: used up before this returns
	var resp *http.Response
	fast := parseRespFast(head, ex.method, rr)
	status := rr.status
	if !fast {
		var err error
		resp, err = http.ReadResponse(bufio.NewReaderSize(bytes.NewReader(head), len(head)), &http.Request{Method: ex.method})
		if err != nil {
			ex.transportErr(errors.New("malformed answer: "+err.Error()), false)
			return false
		}
		status = resp.StatusCode
		if status >= 100 && status < 200 {
			if status == http.StatusSwitchingProtocols {
				ex.transportErr(errors.New("malformed answer: 101 to a request without upgrade"), false)
				return false
			}
			up.consume(len(head)) // 100 Continue and friends: the answer follows
			return true
		}
	}
	if status >= 500 {
		ex.u.report(ex.done, errUpstream5xx)
		if ex.attempts <= ex.sn.retries && ex.idem && (status == 502 || status == 503 || status == 504) {
			up.ex, ex.up = nil, nil
			up.close()
			ex.u.inflight.Add(-1)
			ex.s.m.retries.Add(1)
			ex.dispatch()
			return false
		}
	} else {
		ex.u.report(ex.done, nil)
	}
	ex.status, ex.headSent = status, true
	noBody := ex.method == http.MethodHead || status == http.StatusNoContent || status == http.StatusNotModified
	if ex.reqClose || c.l.draining {
		c.closeAfter = true
	}
	b := c.outBuf()
	if fast {
		ex.upClose = rr.close
		ex.mode, ex.left = bodyLength, rr.cl
		if noBody || rr.cl == 0 {
			ex.mode, ex.left = bodyNone, 0
		}
		b = append(b, statusLine(status)...)
		for _, kv := range rr.lines[:rr.n] {
			b = append(b, kv[0]...)
			b = append(b, ": "...)
			b = append(b, kv[1]...)
			b = append(b, "\r\n"...)
		}
		b = ex.endHead(b, !rr.date, false)
	} else {
		ex.upClose = resp.Close
		switch {
		case noBody:
			ex.mode, ex.left = bodyNone, 0
		case len(resp.TransferEncoding) > 0:
			ex.mode, ex.left = bodyChunked, 1 // scanned to its end
		case resp.ContentLength >= 0:
			ex.mode, ex.left = bodyLength, resp.ContentLength
			if ex.left == 0 {
				ex.mode = bodyNone
			}
		default:
			ex.mode = bodyUntilClose
			ex.upClose, c.closeAfter = true, true
		}
		removeHop(resp.Header)
		if ex.mode == bodyChunked && len(resp.Trailer) > 0 {
			names := make([]string, 0, len(resp.Trailer))
			for k := range resp.Trailer {
				names = append(names, k)
			}
			resp.Header["Trailer"] = []string{strings.Join(names, ", ")}
		}
		b = append(b, statusLine(status)...)
		for k, vv := range resp.Header {
			for _, v := range vv {
				if safeHeaderValue(v) {
					b = append(b, k...)
					b = append(b, ": "...)
					b = append(b, v...)
					b = append(b, "\r\n"...)
				}
			}
		}
		_, hasDate := resp.Header["Date"]
		b = ex.endHead(b, !hasDate, ex.mode == bodyChunked)
	}
	c.out = b
	up.consume(len(head))
	return true
}

// endHead ends an answer head as fastWriter.endHead does.
func (ex *exchange) endHead(b []byte, date, chunked bool) []byte {
	if date {
		b = append(b, "Date: "...)
		b = append(b, httpDateAt(ex.c.l.now)...)
		b = append(b, "\r\n"...)
	}
	if chunked {
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	if ex.c.closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

// finish ends a relayed answer: the upstream connection goes back to the
// pool (or is closed), and the client's next request is handled.
func (ex *exchange) finish() {
	c, up := ex.c, ex.up
	if up != nil {
		up.ex, ex.up = nil, nil
		if ex.upClose || ex.mode == bodyUntilClose || len(up.in) > 0 || up.hup {
			up.close()
		} else {
			up.pool.put(up)
		}
	}
	ex.u.inflight.Add(-1)
	ex.active = false
	ex.s.m.observe(ex.status, time.Since(ex.start))
	c.last = c.l.now
	if !c.flush() {
		return
	}
	c.advance()
}

// evUp is an upstream connection owned by a loop.
type evUp struct {
	l       *loop
	fd      int
	pool    *evPool
	in, out []byte
	sent    int
	sockState
	closed bool
	ex     *exchange // the exchange using it; nil while pooled
	since  time.Time // pooled since
}

func (up *evUp) consume(n int) { up.in = up.in[:copy(up.in, up.in[n:])] }

func (up *evUp) event(ev uint32) {
	if up.ex == nil {
		// pooled: the upstream closed it, or sent what nobody asked for
		if ev&(unix.EPOLLIN|hupEvents) != 0 && !up.stillIdle() {
			up.close()
		}
		return
	}
	up.note(ev)
	if up.sent < len(up.out) {
		if !up.writable || !up.flush() {
			return
		}
	}
	up.ex.readAnswer()
}

// stillIdle checks a pooled connection after an event: nothing to read
// and not closed (the event may be left over from its last exchange).
func (up *evUp) stillIdle() bool {
	var b [1]byte
	_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(up.fd), uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	return e == unix.EAGAIN
}

// flush writes the request; false if the connection failed.
func (up *evUp) flush() bool {
	if up.sent < len(up.out) {
		n, err := up.send(up.fd, up.out[up.sent:])
		up.sent += n
		if err != 0 {
			if ex := up.ex; ex != nil {
				ex.transportErr(&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", err)}, false)
			} else {
				up.close()
			}
			return false
		}
		if up.sent < len(up.out) {
			return true // the socket is full: an event says when it drains
		}
	}
	up.out, up.sent = nil, 0
	return true
}

func (up *evUp) close() {
	if up.closed {
		return
	}
	up.closed = true
	up.l.forget(up.fd)
	if up.in != nil {
		up.l.putBuf(up.in)
		up.in = nil
	}
}

func (up *evUp) abort(err error) {
	if ex := up.ex; ex != nil && ex.active {
		ex.transportErr(err, false)
		return
	}
	up.close()
}
