//go:build linux

package proxy

import (
	"bytes"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// evClient is a client connection owned by a loop.
type evClient struct {
	l          *loop
	fd         int
	remote, ip string
	in         []byte // received, not yet handled
	out        []byte // answer bytes; out[sent:] not yet written
	sent       int
	sockState
	eof        bool // the client closed its side
	closeAfter bool
	closed     bool
	advancing  bool
	ar         *reqArena
	ex         exchange // the request in flight (ex.active), reused
	last       time.Time
	headSince  time.Time // when the head now arriving began (zero: none)
}

func (c *evClient) pending() int { return len(c.out) - c.sent }

func (c *evClient) idle() bool { return !c.ex.active && len(c.in) == 0 && c.pending() == 0 }

func (c *evClient) event(ev uint32) {
	c.note(ev)
	if c.writable && c.pending() > 0 && !c.flush() {
		return
	}
	c.advance()
}

// fill reads what the client sent into c.in; false if the connection
// failed (and was closed).
func (c *evClient) fill() bool {
	if c.in == nil {
		c.in = c.l.getBuf()
	}
	if cap(c.in)-len(c.in) < 512 {
		if cap(c.in) >= maxEvHead+maxReplayBody {
			c.readable = true // full: the handler decides
			return true
		}
		c.in = append(make([]byte, 0, 2*cap(c.in)), c.in...)
	}
	room := c.in[len(c.in):cap(c.in)]
	for {
		n, err := rawRead(c.fd, room)
		switch {
		case err == 0 && n > 0:
			c.in = c.in[:len(c.in)+n]
			if n < len(room) && !c.hup {
				c.readable = false // drained: the next data brings an event
			}
			return true
		case err == 0:
			c.eof, c.readable = true, false
			return true
		case err == unix.EAGAIN:
			c.readable = false
			return true
		case err == unix.EINTR:
			continue
		default:
			c.abort(os.NewSyscallError("read", err))
			return false
		}
	}
}

// flush writes pending answer bytes; false if the connection failed.
func (c *evClient) flush() bool {
	if c.pending() > 0 {
		n, err := c.send(c.fd, c.out[c.sent:])
		c.sent += n
		if err != 0 {
			c.abort(os.NewSyscallError("write", err))
			return false
		}
		if c.pending() > 0 {
			return true // the socket is full: an event says when it drains
		}
	}
	c.out, c.sent = c.out[:0], 0
	if c.ex.active && c.ex.paused {
		c.ex.paused = false
		c.ex.readAnswer()
	}
	return true
}

// advance moves the connection on after an event: with a request in
// flight it only watches for the client leaving; else it handles the
// requests that have arrived, reading more as the socket allows.
func (c *evClient) advance() {
	if c.closed || c.advancing {
		return // an exchange ended inside advance: its loop goes on
	}
	c.advancing = true
	c.advance1()
	c.advancing = false
}

func (c *evClient) advance1() {
	if c.ex.active {
		if c.readable && len(c.in) < maxEvHead && !c.fill() {
			return
		}
		if c.eof {
			c.ex.clientGone()
		}
		return
	}
	for !c.closed && !c.ex.active {
		if c.pending() > 0 {
			return // the answers before go first
		}
		if c.closeAfter {
			c.close()
			return
		}
		i := bytes.Index(c.in, crlf2)
		if i < 0 {
			if len(c.in) >= maxEvHead {
				c.handoff()
				return
			}
			if c.readable {
				if !c.fill() {
					return
				}
				if c.readable || len(c.in) > 0 && bytes.Index(c.in, crlf2) >= 0 {
					continue
				}
			}
			if c.eof {
				c.close()
				return
			}
			if len(c.in) == 0 {
				c.headSince = time.Time{}
				c.release()
			} else if c.headSince.IsZero() {
				c.headSince = c.l.now
			}
			return
		}
		if !c.request(c.in[:i+4]) {
			return
		}
	}
}

// release gives an idle connection's buffers back to the loop.
func (c *evClient) release() {
	if len(c.in) == 0 && c.in != nil {
		c.l.putBuf(c.in)
		c.in = nil
	}
	if c.pending() == 0 && c.out != nil {
		c.l.putBuf(c.out)
		c.out, c.sent = nil, 0
	}
}

// request handles the request whose head is at the start of c.in. false:
// nothing more can happen now (more body to come, handed over, closed).
func (c *evClient) request(head []byte) bool {
	if c.ar == nil {
		c.ar = new(reqArena)
	}
	r := parseFastIn(c.ar, head, nil)
	if r == nil || r.ContentLength > maxReplayBody {
		c.handoff()
		return false
	}
	total := len(head) + int(r.ContentLength)
	if len(c.in) < total {
		if cap(c.in) < total {
			c.in = append(make([]byte, 0, total), c.in...)
		}
		for len(c.in) < total && c.readable {
			if !c.fill() {
				return false
			}
		}
		if len(c.in) >= total {
			return true // parsed again with the whole body
		}
		if c.eof {
			c.close()
		} else if c.headSince.IsZero() {
			c.headSince = c.l.now // the rest gets ReadHeaderTimeout too
		}
		return false
	}
	c.headSince = time.Time{}
	if evTestHook != nil {
		evTestHook(r)
	}
	g := c.l.s.GW
	start := c.l.now // when the request's last bytes were seen ready
	s, key, status, msg := g.route(r.URL.Path)
	if s == nil {
		g.metrics.unrouted.Add(1)
		c.consume(total)
		c.respond(r, status, msg, "")
		return true
	}
	sn := s.load()
	if sn.slp != "" || sn.scheme != "http" {
		c.handoff() // foreign code or http.Transport: the goroutine engine
		return false
	}
	r.RemoteAddr = c.remote
	if sn.keeps {
		c.ar = nil // a program may keep request values: next request, new memory
	}
	if status, msg, retryAfter := g.screen(r, s, sn, key, c.ip); status != 0 {
		c.consume(total)
		c.respond(r, status, msg, retryAfter)
		s.m.observe(status, time.Since(start))
		return true
	}
	o := g.outRequest(r, sn, key, c.ip, nil)
	if r.ContentLength > 0 {
		o.body = bytes.NewReader(c.in[len(head):total])
	} else {
		o.body = nil
	}
	ex := &c.ex
	ex.begin(r, s, sn, key, start)
	c.l.rb.b = ex.req[:0]
	c.l.bw.Reset(&c.l.rb)
	err := writeRequest(c.l.bw, &o, nil)
	ex.req, c.l.rb.b = c.l.rb.b, nil
	c.consume(total)
	if err != nil {
		ex.active = false
		c.respond(r, http.StatusBadRequest, err.Error(), "")
		s.m.observe(http.StatusBadRequest, time.Since(start))
		return true
	}
	if sn.cfg.LoadBalance.Strategy == "hash" {
		if sn.hashHdr != "" {
			ex.hashKey = r.Header.Get(sn.hashHdr)
		}
		if ex.hashKey == "" {
			ex.hashKey = c.ip
		}
	}
	ex.dispatch()
	return !c.ex.active
}

func (c *evClient) consume(n int) {
	c.in = c.in[:copy(c.in, c.in[n:])]
}

// respond answers with an error in the management API's envelope.
func (c *evClient) respond(r *http.Request, status int, msg, retryAfter string) {
	if r.Close || c.l.draining {
		c.closeAfter = true
	}
	c.out = appendError(c.outBuf(), c.l.now, status, msg, retryAfter, r.Method == http.MethodHead, c.closeAfter)
	c.last = c.l.now
	c.flush()
}

func (c *evClient) outBuf() []byte {
	if c.out == nil {
		c.out = c.l.getBuf()
	}
	return c.out
}

func appendError(b []byte, now time.Time, status int, msg, retryAfter string, head, closeAfter bool) []byte {
	body := appendErrorBody(make([]byte, 0, 64+len(msg)), status, msg)
	b = append(b, statusLine(status)...)
	b = append(b, "Content-Type: application/json; charset=utf-8\r\n"...)
	if retryAfter != "" {
		b = append(b, "Retry-After: "...)
		b = append(b, retryAfter...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "Date: "...)
	b = append(b, httpDateAt(now)...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	if !head {
		b = append(b, body...)
	}
	return b
}

// handoff gives the connection, with what it sent that was not handled,
// to the goroutine engine.
func (c *evClient) handoff() {
	l := c.l
	l.s.handoffs.Add(1)
	pre := append([]byte(nil), c.in...)
	fd := c.fd
	c.closed = true
	delete(l.conns, c)
	l.fds[fd] = nil
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	c.release()
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		l.logf("data plane: handing a connection over: %v", err)
		return
	}
	if len(pre) > 0 {
		nc = &prefixConn{Conn: nc, pre: pre}
	}
	l.s.Fallback.ServeConn(nc)
}

// prefixConn reads pre before what arrives on Conn.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (c *evClient) close() {
	if c.closed {
		return
	}
	if c.ex.active {
		c.ex.clientGone()
		return // clientGone closes c
	}
	c.closed = true
	delete(c.l.conns, c)
	c.l.forget(c.fd)
	c.in = c.in[:0]
	c.out, c.sent = c.out[:0], 0
	c.release()
}

func (c *evClient) abort(error) {
	c.out, c.sent = c.out[:0], 0
	c.close()
}
