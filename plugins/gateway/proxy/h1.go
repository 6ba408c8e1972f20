package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// h1Pool is a keep-alive pool of plain HTTP/1.1 connections to one
// upstream address. Unlike http.Transport it uses no per-connection
// goroutines: the handler's goroutine writes the request and reads the
// response on the connection itself, which saves two goroutine hand-offs
// per request (profiling showed them dominating the proxy's CPU time).
type h1Pool struct {
	addr    string
	dialer  net.Dialer
	maxIdle int
	mu      sync.Mutex
	idle    []*h1Conn
	closed  bool
	dead    atomic.Bool // closed, readable without the lock (event loops)
}

type h1Conn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer // writes to w
	w  upWriter
	rr rawResp    // the head of the current exchange, when relayed raw
	ex h1Exchange // the current exchange (a connection serves one at a time)
	dl time.Time  // read deadline in place (zero: none), see awaitAnswer
}

func newH1Pool(addr string, dialTimeout time.Duration, maxIdle int) *h1Pool {
	return &h1Pool{addr: addr, maxIdle: maxIdle,
		dialer: net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}}
}

func (p *h1Pool) get(ctx context.Context) (c *h1Conn, reused bool, err error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, true, nil
	}
	p.mu.Unlock()
	return p.dial(ctx)
}

func (p *h1Pool) dial(ctx context.Context) (*h1Conn, bool, error) {
	nc, err := p.dialer.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, false, err
	}
	c := &h1Conn{c: nc, br: bufio.NewReaderSize(nc, 16<<10)}
	c.w.c = nc
	if sc, ok := nc.(syscall.Conn); ok {
		c.w.rc, _ = sc.SyscallConn()
	}
	c.bw = bufio.NewWriterSize(&c.w, 16<<10)
	return c, false, nil
}

// upWriter is the writer under an upstream connection's bufio.Writer.
// The last write of a request (await set) is sent from inside a RawConn
// read callback, which then waits until the connection is readable: the
// answer is read at once afterwards, instead of a first read that fails
// with EAGAIN before waiting in the netpoller (a syscall and a poller
// round per request). This is race-free because the read-readiness is
// reset before the request leaves, and the answer can only follow it.
type upWriter struct {
	c     net.Conn
	rc    syscall.RawConn // nil: plain writes only
	await bool
}

func (u *upWriter) Write(p []byte) (int, error) {
	if !u.await || u.rc == nil {
		return u.c.Write(p)
	}
	u.await = false
	sent, called := 0, false
	var werr error
	// A read deadline or a close ends the wait early: the read that
	// follows reports it, so the error of Read itself does not matter.
	_ = u.rc.Read(func(fd uintptr) bool {
		if called {
			return true // readable (or woken): the caller reads
		}
		called = true
		for sent < len(p) {
			n, err := syscall.Write(int(fd), p[sent:])
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				if err != syscall.EAGAIN {
					werr = err
				}
				return true
			}
			sent += n
		}
		return false // wait for the answer
	})
	if werr != nil {
		return sent, &net.OpError{Op: "write", Net: "tcp", Addr: u.c.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
	}
	if sent < len(p) {
		// the socket buffer was full (or the callback did not run):
		// the rest goes the usual way
		n, err := u.c.Write(p[sent:])
		return sent + n, err
	}
	return len(p), nil
}

func (p *h1Pool) put(c *h1Conn) {
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.maxIdle {
		p.mu.Unlock()
		c.c.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// close closes the idle connections; busy ones are closed when returned.
func (p *h1Pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	p.dead.Store(true)
	for _, c := range idle {
		c.c.Close()
	}
}

var aLongTimeAgo = time.Unix(1, 0)

func noStop() bool { return true }

// errStale marks a failure on a reused connection before any response
// byte arrived: the upstream closed it while idle, so the request can be
// sent again on a new connection.
var errStale = errors.New("stale keep-alive connection")

func safeHeaderValue(v string) bool {
	return strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0
}

// outReq is a request as sent upstream on an h1Pool connection.
type outReq struct {
	method, path, rawQuery string // path already escaped
	host                   string // the client's Host (also X-Forwarded-Host)
	addr                   string // the upstream's address: Host when host is empty
	header                 http.Header
	xff, xproto            string // X-Forwarded-For and -Proto (X-Forwarded-Host is host)
	body                   io.Reader
	cl                     int64 // body length, -1 unknown (chunked)
	ctx                    context.Context
	respTO                 time.Duration // response_header_timeout; 0: none
	// client, when set, is watched for a disconnect while the upstream
	// is slow to answer (the fast engine has no per-request context)
	client *fastWriter
}

// errClientGone: the client closed its connection while the upstream
// had not answered yet; the upstream connection was closed (which cancels
// the request there).
var errClientGone = errors.New("client closed the connection")

// Slow answers: awaitAnswer starts watching the client when the upstream
// has not begun to answer after between slowMin and slowMax. The read
// deadline that notices it is renewed only when less than slowMin of it is
// left, so a busy connection sets it once per slowMax-slowMin, not once
// per request.
const (
	slowMin = 20 * time.Millisecond
	slowMax = 100 * time.Millisecond
)

// errNoAnswer: the upstream did not begin its answer within the service's
// response_header_timeout; the connection was closed.
var errNoAnswer = errors.New("no answer within response_header_timeout")

// awaitAnswer waits for the first byte of the upstream's answer on c, at
// most respTO (0: no limit). With client set, it watches the client from
// the moment the answer is slow, and closes the upstream connection when
// the client goes away.
func (c *h1Conn) awaitAnswer(client *fastWriter, respTO time.Duration) error {
	if client == nil { // roundTrip set the deadline for respTO
		_, err := c.br.Peek(1)
		if respTO > 0 && isTimeout(err) && !c.dl.IsZero() && !time.Now().Before(c.dl) {
			return errNoAnswer
		}
		return err
	}
	c.armDeadline(client)
	var gone *atomic.Bool // set once the answer is slow (a heap allocation)
	var stop func()
	for {
		_, err := c.br.Peek(1)
		if err != nil && stop == nil && isTimeout(err) {
			// slow: watch the client, wait until respTO from now (the
			// limit is thus up to slowMax late)
			var dl time.Time
			if respTO > 0 {
				dl = time.Now().Add(respTO)
			}
			c.c.SetReadDeadline(dl)
			c.dl = dl
			g := new(atomic.Bool)
			gone = g
			stop = client.watch(func() {
				g.Store(true)
				c.c.SetReadDeadline(aLongTimeAgo)
			})
			continue
		}
		if stop != nil {
			stop()
			// no deadline after a slow wait: armDeadline sets a fresh one
			// for the next request, and the rest of this answer has none
			c.clearDeadline()
		}
		if gone != nil && gone.Load() {
			return errClientGone
		}
		if stop != nil && respTO > 0 && isTimeout(err) {
			return errNoAnswer
		}
		return err
	}
}

// armDeadline makes sure a read deadline at least slowMin ahead is in
// place: when it passes before the answer begins, awaitAnswer watches the
// client.
func (c *h1Conn) armDeadline(client *fastWriter) {
	now := client.start
	if now.IsZero() {
		now = time.Now()
	}
	if c.dl.IsZero() || c.dl.Sub(now) < slowMin {
		c.dl = now.Add(slowMax)
		c.c.SetReadDeadline(c.dl)
	}
}

// clearDeadline removes awaitAnswer's deadline before reads that may
// take long (a body beyond what is buffered, the general parser).
func (c *h1Conn) clearDeadline() {
	if !c.dl.IsZero() {
		c.c.SetReadDeadline(time.Time{})
		c.dl = time.Time{}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// the X-Forwarded headers come from outReq, not from the header map
func forwardedKey(k string) bool {
	return len(k) > 12 && k[:12] == "X-Forwarded-" && (k == "X-Forwarded-For" || k == "X-Forwarded-Proto" || k == "X-Forwarded-Host")
}

// writeRequest writes o in HTTP/1.1. With aw (the writer under bw), the
// final flush waits for the answer to become readable (see upWriter).
func writeRequest(bw *bufio.Writer, o *outReq, aw *upWriter) error {
	bw.WriteString(o.method)
	bw.WriteByte(' ')
	bw.WriteString(o.path)
	if o.rawQuery != "" {
		bw.WriteByte('?')
		bw.WriteString(o.rawQuery)
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	if o.host != "" {
		bw.WriteString(o.host)
	} else {
		bw.WriteString(o.addr)
	}
	bw.WriteString("\r\n")
	if len(o.header) > 0 { // ranging over an empty map still costs an iterator
		for k, vv := range o.header {
			if k == "Host" || k == "Content-Length" || forwardedKey(k) {
				continue
			}
			for _, v := range vv {
				if v == "" && k == "User-Agent" {
					continue
				}
				if !safeHeaderValue(v) || !safeHeaderValue(k) {
					return errors.New("header " + strconv.Quote(k) + " holds a line break")
				}
				bw.WriteString(k)
				bw.WriteString(": ")
				bw.WriteString(v)
				bw.WriteString("\r\n")
			}
		}
	}
	if !safeHeaderValue(o.xff) || !safeHeaderValue(o.host) {
		return errors.New("forwarded header holds a line break")
	}
	bw.WriteString("X-Forwarded-For: ")
	bw.WriteString(o.xff)
	bw.WriteString("\r\nX-Forwarded-Proto: ")
	bw.WriteString(o.xproto)
	bw.WriteString("\r\n")
	if o.host != "" {
		bw.WriteString("X-Forwarded-Host: ")
		bw.WriteString(o.host)
		bw.WriteString("\r\n")
	}
	chunked := false
	switch {
	case o.body == nil:
		if o.method == http.MethodPost || o.method == http.MethodPut || o.method == http.MethodPatch {
			bw.WriteString("Content-Length: 0\r\n")
		}
	case o.cl >= 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(o.cl, 10))
		bw.WriteString("\r\n")
	default:
		chunked = true
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
	if o.body != nil {
		if chunked {
			if err := writeChunked(bw, o.body); err != nil {
				return err
			}
		} else if _, err := io.CopyN(bw, o.body, o.cl); err != nil {
			return err
		}
	}
	if aw != nil {
		aw.await = true
		defer func() { aw.await = false }() // Flush may have had nothing to write
	}
	return bw.Flush()
}

func writeChunked(bw *bufio.Writer, body io.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			bw.WriteString(strconv.FormatInt(int64(n), 16))
			bw.WriteString("\r\n")
			bw.Write(buf[:n])
			bw.WriteString("\r\n")
		}
		if err == io.EOF {
			bw.WriteString("0\r\n\r\n")
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// h1Exchange is one request/response on a pooled connection.
type h1Exchange struct {
	pool *h1Pool
	conn *h1Conn
	stop func() bool
	raw  *rawResp // set when the head was parsed in place (resp is nil)
}

// roundTrip sends out on a pooled connection and reads the response head.
// The caller must finish the exchange with done once the body is consumed.
// With raw, a common response head is parsed in place (ex.raw, nil
// response) for relayRaw instead of by http.ReadResponse.
func (p *h1Pool) roundTrip(o *outReq, fresh, raw bool) (*http.Response, *h1Exchange, error) {
	ctx := o.ctx
	var c *h1Conn
	var reused bool
	var err error
	if fresh {
		c, reused, err = p.dial(ctx)
	} else {
		c, reused, err = p.get(ctx)
	}
	if err != nil {
		return nil, nil, err
	}
	conn := c.c
	stop := noStop
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { conn.SetDeadline(aLongTimeAgo) })
	}
	ex := &c.ex
	*ex = h1Exchange{pool: p, conn: c, stop: stop}
	if o.client != nil {
		// the slow-answer deadline is in place before the request leaves
		// (the write waits for the answer, see upWriter)
		c.armDeadline(o.client)
	} else if o.respTO > 0 {
		// no client to watch (the context is): the deadline is the
		// response_header_timeout, in place before the request leaves
		c.dl = time.Now().Add(o.respTO)
		c.c.SetReadDeadline(c.dl)
	} else {
		// no deadline (one left by an exchange of the fast engine on
		// this pooled connection would fail the wait)
		c.clearDeadline()
	}
	if err := writeRequest(c.bw, o, &c.w); err != nil {
		ex.done(false)
		if reused && ctx.Err() == nil {
			return nil, nil, errStale
		}
		return nil, nil, err
	}
	if err := c.awaitAnswer(o.client, o.respTO); err != nil {
		ex.done(false)
		if err != errClientGone && reused && ctx.Err() == nil && (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
			return nil, nil, errStale
		}
		return nil, nil, err
	}
	if raw {
		head, ok, err := peekHead(c.br, c.clearDeadline)
		if err == nil && ok && parseRespFast(head, o.method, &c.rr) {
			if int64(c.br.Buffered()) < int64(c.rr.head)+c.rr.cl {
				c.clearDeadline() // the body is still to be read
			}
			ex.raw = &c.rr
			return nil, ex, nil
		}
	}
	c.clearDeadline()
	out := &http.Request{Method: o.method}
	for {
		resp, err := http.ReadResponse(c.br, out)
		if err != nil {
			ex.done(false)
			if reused && ctx.Err() == nil && (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)) {
				return nil, nil, errStale
			}
			return nil, nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue // 100 Continue and friends: the real answer follows
		}
		return resp, ex, nil
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}

// done returns the connection to the pool when reusable is true (the body
// was read to its end and neither side asked to close), else closes it.
func (ex *h1Exchange) done(reusable bool) {
	if ex == nil || ex.conn == nil {
		return
	}
	if !ex.stop() {
		reusable = false // the request's context ended: the deadline is poisoned
	}
	c := ex.conn
	ex.conn, ex.raw = nil, nil // before put: c.ex may be reused at once
	if reusable {
		ex.pool.put(c)
	} else {
		c.c.Close()
	}
}
