package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Server is the data plane's HTTP/1.1 server. It replaces net/http's
// server on the hot path: one goroutine per connection reads a request,
// runs the handler and writes the answer straight into the connection's
// buffer, without net/http's per-request background reader (a goroutine
// and a syscall per request) and response machinery. Keep-alive,
// pipelined requests, chunked bodies both ways, HEAD, Expect:
// 100-continue, HTTP/1.0 and Hijack (for WebSocket upgrades) are handled.
//
// Shutdown is graceful like http.Server's: stop accepting, close idle
// connections, let busy ones finish their request, then close them.
type Server struct {
	Handler           http.Handler
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            logrus.FieldLogger

	mu       sync.Mutex
	conns    map[*fconn]struct{}
	ln       net.Listener
	shutting atomic.Bool
	wg       sync.WaitGroup
}

type fconn struct {
	c    net.Conn
	idle atomic.Bool
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = http.ErrServerClosed

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return acceptLoop(ln, &s.shutting, s.ServeConn)
}

// acceptLoop accepts connections on ln and passes each to serve until
// shutting is set (ErrServerClosed) or Accept fails for good; passing
// failures (see retryAccept) are retried after a growing pause.
func acceptLoop(ln net.Listener, shutting *atomic.Bool, serve func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if shutting.Load() {
				return ErrServerClosed
			}
			if retryAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if shutting.Load() {
			c.Close()
			return ErrServerClosed
		}
		serve(c)
	}
}

// retryAccept reports whether Accept failed for a passing reason: a
// timeout, or the process (or system) out of file descriptors, which
// closing connections cures. Serve then backs off and tries again
// instead of ending the data plane.
func retryAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// ServeConn serves one connection accepted elsewhere until it closes
// (the event-loop engine hands over the connections it does not handle).
// Shutdown waits for it like for the connections Serve accepted.
func (s *Server) ServeConn(c net.Conn) {
	fc := &fconn{c: c}
	fc.idle.Store(true)
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[*fconn]struct{}{}
	}
	if s.shutting.Load() {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.conns[fc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go s.serveConn(fc)
}

// Shutdown stops accepting, closes idle connections and waits for the busy
// ones to finish their current request (or ctx to end, then closes them).
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutting.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	for fc := range s.conns {
		if fc.idle.Load() {
			// wake the reader; it sees shutting and closes
			fc.c.SetReadDeadline(aLongTimeAgo)
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			s.mu.Lock()
			for fc := range s.conns {
				fc.c.Close()
			}
			s.mu.Unlock()
			return ctx.Err()
		case <-t.C:
			s.mu.Lock()
			for fc := range s.conns {
				if fc.idle.Load() {
					fc.c.SetReadDeadline(aLongTimeAgo)
				}
			}
			s.mu.Unlock()
		}
	}
}

func (s *Server) forget(fc *fconn) {
	s.mu.Lock()
	delete(s.conns, fc)
	s.mu.Unlock()
	s.wg.Done()
}

var readerPool, writerPool sync.Pool

// maxHeaderBytes bounds a request head, as http.Server's default does.
const maxHeaderBytes = 1<<20 + 4096

// limitReader reads at most n bytes from r (n is reset per request).
type limitReader struct {
	r net.Conn
	n int64
}

// errHeadTooLarge: a request head beyond maxHeaderBytes (431).
var errHeadTooLarge = errors.New("request head too large")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (s *Server) serveConn(fc *fconn) {
	c := fc.c
	hijacked := false
	defer func() {
		if p := recover(); p != nil && s.Logger != nil {
			s.Logger.Errorf("data plane connection panicked: %v\n%s", p, debug.Stack())
		}
		if !hijacked {
			c.Close()
		}
		s.forget(fc)
	}()
	lr := &limitReader{r: c}
	br, _ := readerPool.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReaderSize(lr, 8<<10)
	} else {
		br.Reset(lr)
	}
	bw, _ := writerPool.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(c, 8<<10)
	} else {
		bw.Reset(c)
	}
	defer func() {
		if !hijacked {
			br.Reset(nil)
			bw.Reset(nil)
			readerPool.Put(br)
			writerPool.Put(bw)
		}
	}()
	remote := c.RemoteAddr().String()
	w := &fastWriter{bw: bw, h: make(http.Header, 8), conn: c, br: br, remote: remote}
	if host, _, err := net.SplitHostPort(remote); err == nil {
		w.ip = host
	} else {
		w.ip = remote
	}
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = 120 * time.Second
	}
	hdrTO := s.ReadHeaderTimeout
	if hdrTO <= 0 {
		hdrTO = 10 * time.Second
	}
	// dlAt is when the idle read deadline was last set (zero: another
	// deadline is in place). Setting a deadline costs a runtime timer
	// update, so on a busy keep-alive connection it is refreshed at most
	// once a second: the connection then idles between idle-1s and idle.
	var dlAt time.Time
	var ar *reqArena // reused while handlers say nothing keeps the request
	for {
		// wait for the next request as an idle connection
		fc.idle.Store(true)
		if s.shutting.Load() {
			return
		}
		if br.Buffered() == 0 {
			now := w.end // when the last request ended, if the handler said
			if now.IsZero() {
				now = time.Now()
			}
			if dlAt.IsZero() || now.Sub(dlAt) > time.Second {
				c.SetReadDeadline(now.Add(idle))
				dlAt = now
			}
		}
		lr.n = maxHeaderBytes
		if _, err := br.Peek(1); err != nil {
			return
		}
		fc.idle.Store(false)
		var req *http.Request
		head, ok, err := peekHead(br, func() {
			// the head is still arriving: it gets ReadHeaderTimeout
			c.SetReadDeadline(time.Now().Add(hdrTO))
			dlAt = time.Time{}
		})
		if err == nil && ok {
			if ar == nil {
				ar = new(reqArena)
			}
			if req = parseFastIn(ar, head, br); req != nil {
				br.Discard(len(head))
			}
		}
		fast := req != nil
		if !fast {
			req, err = http.ReadRequest(br)
		}
		lr.n = math.MaxInt64
		if err != nil {
			switch {
			case errors.Is(err, errHeadTooLarge):
				// as net/http answers (and nginx, with 400)
				bw.WriteString("HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 23\r\n\r\nrequest head too large\n")
			case err != io.EOF:
				bw.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 12\r\n\r\nbad request\n")
			}
			bw.Flush()
			return
		}
		if !fast || req.Body != http.NoBody {
			// a body is read (or a hijacked stream runs) without deadline
			c.SetReadDeadline(time.Time{})
			dlAt = time.Time{}
		}
		// The request keeps ReadRequest's background context: without a
		// reader watching the connection during the handler, nothing could
		// cancel it early, and a per-request context costs allocations.
		req.RemoteAddr = remote
		if req.ProtoMajor == 1 && req.ProtoMinor == 1 && req.ContentLength != 0 && req.Header.Get("Expect") == "100-continue" {
			// the body is wanted: tell the client to send it
			bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			bw.Flush()
			req.Header.Del("Expect")
		}
		w.reset(req)
		s.Handler.ServeHTTP(w, req)
		if w.hijacked {
			hijacked = true
			return
		}
		if w.dlLost {
			dlAt = time.Time{}
		}
		if fast && !w.Recyclable {
			ar = nil // something may keep the request: a new arena next time
		}
		if err := w.finish(); err != nil {
			return
		}
		// read what the handler left of the body, within reason
		if req.Body != nil && req.Body != http.NoBody {
			n, err := io.CopyN(io.Discard, req.Body, 256<<10)
			if err != io.EOF && !(err == nil && n == 0) {
				return
			}
			req.Body.Close()
		}
		if w.closeAfter || req.Close || s.shutting.Load() {
			return
		}
	}
}

// fastWriter is the http.ResponseWriter of Server.
type fastWriter struct {
	bw         *bufio.Writer
	br         *bufio.Reader
	conn       net.Conn
	req        *http.Request
	h          http.Header
	status     int
	cl, n      int64 // declared Content-Length (-1 none) and body bytes written
	wrote      bool
	chunked    bool
	noBody     bool
	closeAfter bool
	hijacked   bool
	err        error
	dlLost     bool // watch changed the connection's read deadline
	// Recyclable is set by a handler that guarantees that nothing keeps a
	// reference to the request or any of its strings or header values
	// once it returns: the connection then reuses the request's memory.
	Recyclable bool
	// the connection's RemoteAddr and its host part (the client IP),
	// computed once per connection
	remote, ip string
	// start and end of the request as the Gateway measured them (saves
	// the server and the upstream pool clock reads); zero if unknown
	start, end time.Time
}

// watch watches the client connection for a disconnect while the handler
// waits for an upstream (nothing else reads the connection then): cancel
// runs when the client closes or resets it. Data from the client (a
// pipelined request) ends the watch without cancel. stop ends the watch
// and returns once the watcher is gone.
func (w *fastWriter) watch(cancel func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { _ = recover() }()
		if _, err := w.br.Peek(1); err != nil && !isTimeout(err) {
			cancel()
		}
	}()
	return func() {
		w.conn.SetReadDeadline(aLongTimeAgo)
		<-done
		w.conn.SetReadDeadline(time.Time{})
		w.dlLost = true
	}
}

func (w *fastWriter) reset(r *http.Request) {
	if len(w.h) > 0 {
		clear(w.h)
	}
	w.req, w.status, w.wrote, w.chunked, w.noBody, w.closeAfter, w.err, w.dlLost = r, 0, false, false, false, false, nil, false
	w.start, w.end, w.Recyclable = time.Time{}, time.Time{}, false
	w.cl, w.n = -1, 0
}

func (w *fastWriter) Header() http.Header { return w.h }

var dateCache atomic.Pointer[[2]string] // unix second, formatted

func httpDate() string { return httpDateAt(time.Now()) }

// httpDateAt is httpDate for a time the caller has read already.
func httpDateAt(now time.Time) string {
	sec := strconv.FormatInt(now.Unix(), 10)
	if d := dateCache.Load(); d != nil && d[0] == sec {
		return d[1]
	}
	d := &[2]string{sec, now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d[1]
}

func (w *fastWriter) WriteHeader(code int) {
	if w.wrote || w.hijacked {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		return // informational answers are not relayed
	}
	w.wrote = true
	w.status = code
	bw := w.bw
	req := w.req
	w.noBody = req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	cl, hasCL := w.h["Content-Length"]
	if hasCL {
		v, err := strconv.ParseInt(cl[0], 10, 64)
		if err != nil || v < 0 || len(cl) != 1 {
			delete(w.h, "Content-Length")
			hasCL = false
		} else {
			w.cl = v
		}
	}
	delete(w.h, "Transfer-Encoding")
	if !hasCL && !w.noBody {
		if req.ProtoAtLeast(1, 1) {
			w.chunked = true
		} else {
			w.closeAfter = true
		}
	}
	if req.Close {
		w.closeAfter = true
	}
	bw.WriteString(statusLine(code))
	for k, vv := range w.h {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
			continue
		}
		for _, v := range vv {
			if !safeHeaderValue(v) {
				continue
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	_, hasDate := w.h["Date"]
	w.endHead(hasDate)
}

// endHead writes the head's last lines: Date unless the answer has one,
// the framing and connection headers, and the blank line.
func (w *fastWriter) endHead(hasDate bool) {
	bw := w.bw
	if !hasDate {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.closeAfter {
		bw.WriteString("Connection: close\r\n")
	} else if !w.req.ProtoAtLeast(1, 1) {
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wrote {
		if _, ok := w.h["Content-Type"]; !ok && len(p) > 0 {
			w.h["Content-Type"] = []string{http.DetectContentType(p)}
		}
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody || len(p) == 0 {
		return len(p), nil
	}
	if w.chunked {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
	}
	n, err := w.bw.Write(p)
	w.n += int64(n)
	if err == nil && w.chunked {
		_, err = w.bw.WriteString("\r\n")
	}
	if err != nil {
		w.err = err
	}
	return n, err
}

func (w *fastWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
	}
}

// FlushError is what http.ResponseController calls.
func (w *fastWriter) FlushError() error {
	w.Flush()
	return w.err
}

func (w *fastWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wrote {
		return nil, nil, errors.New("hijack after the response began")
	}
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(w.br, w.bw), nil
}

// finish ends the response: the status if none was written, the last
// chunk and trailers, and a flush.
func (w *fastWriter) finish() error {
	if !w.wrote {
		if _, ok := w.h["Content-Length"]; !ok {
			w.h["Content-Length"] = zeroLen
		}
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked && w.err == nil {
		w.bw.WriteString("0\r\n")
		for k, vv := range w.h {
			if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix {
				for _, v := range vv {
					if safeHeaderValue(v) {
						w.bw.WriteString(k[len(http.TrailerPrefix):])
						w.bw.WriteString(": ")
						w.bw.WriteString(v)
						w.bw.WriteString("\r\n")
					}
				}
			}
		}
		w.bw.WriteString("\r\n")
	}
	if w.err != nil {
		return w.err
	}
	if !w.noBody && w.cl >= 0 && w.n != w.cl {
		// the body fell short of (or beyond) its Content-Length: the
		// connection's framing is lost, so it must close
		w.bw.Flush()
		return fmt.Errorf("response body of %d bytes, Content-Length %d", w.n, w.cl)
	}
	return w.bw.Flush()
}

var zeroLen = []string{"0"}

// statusLines caches "HTTP/1.1 <code> <text>\r\n" per code.
var statusLines [1000]atomic.Pointer[string]

func statusLine(code int) string {
	if p := statusLines[code].Load(); p != nil {
		return *p
	}
	l := "HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n"
	statusLines[code].Store(&l)
	return l
}

// relayRaw answers with an upstream response parsed in place (rr, from
// parseRespFast on ubr): the head as WriteHeader would write it, then
// rr.cl body bytes copied from ubr. It reports whether the upstream
// response was consumed to its end (the connection can be reused).
func (w *fastWriter) relayRaw(rr *rawResp, ubr *bufio.Reader) (clean bool) {
	code := rr.status
	req := w.req
	w.wrote, w.status = true, code
	w.noBody = req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	w.cl = rr.cl
	if w.noBody {
		w.cl = -1
	}
	if req.Close {
		w.closeAfter = true
	}
	bw := w.bw
	bw.WriteString(statusLine(code))
	for _, kv := range rr.lines[:rr.n] {
		bw.Write(kv[0])
		bw.WriteString(": ")
		bw.Write(kv[1])
		bw.WriteString("\r\n")
	}
	w.endHead(rr.date)
	ubr.Discard(rr.head)
	n := rr.cl
	for n > 0 {
		if ubr.Buffered() == 0 {
			if _, err := ubr.Peek(1); err != nil {
				return false
			}
		}
		b, _ := ubr.Peek(int(min(int64(ubr.Buffered()), n)))
		if _, err := bw.Write(b); err != nil {
			w.err = err
			return false
		}
		ubr.Discard(len(b))
		n -= int64(len(b))
		w.n += int64(len(b))
	}
	return true
}
