package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plugd/plugd/plugins/gateway/breaker"
	"github.com/plugd/plugd/plugins/gateway/limit"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/sdk"
)

// maxReplayBody is the largest request body buffered so that a retry can
// send it again.
const maxReplayBody = 64 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// writeError answers in the management API's envelope.
func writeError(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	h["Content-Type"] = jsonCT
	w.WriteHeader(status)
	_, _ = w.Write(appendErrorBody(make([]byte, 0, 64+len(msg)), status, msg))
}

// appendErrorBody appends the envelope of an error to b.
func appendErrorBody(b []byte, status int, msg string) []byte {
	b = append(b, `{"message":`...)
	b = strconv.AppendQuote(b, msg)
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	return append(b, "}\n"...)
}

var jsonCT = []string{"application/json; charset=utf-8"}

// ServeHTTP routes one request of the data plane.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	s, key, status, msg := g.route(r.URL.Path)
	if s == nil {
		g.metrics.unrouted.Add(1)
		writeError(w, status, msg)
		return
	}
	if fw, ok := w.(*fastWriter); ok {
		// the fast engine's writer records the status itself
		fw.start = start
		g.serveService(fw, r, s, key, fw)
		st := fw.status
		if st == 0 && fw.hijacked {
			st = http.StatusSwitchingProtocols
		}
		fw.end = time.Now()
		s.m.observe(st, fw.end.Sub(start))
		return
	}
	sw := &statusWriter{ResponseWriter: w}
	g.serveService(sw, r, s, key, nil)
	s.m.observe(sw.status, time.Since(start))
}

// route finds the service a path is for; nil with the status and message
// of the refusal when there is none.
func (g *Gateway) route(path string) (s *Service, key string, status int, msg string) {
	if !strings.HasPrefix(path, g.opt.Prefix) {
		return nil, "", http.StatusNotFound, "path is outside the gateway prefix " + g.opt.Prefix
	}
	rest := path[len(g.opt.Prefix):]
	key = rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		key = rest[:i]
	}
	if s = g.lookup(key); s != nil {
		return s, key, 0, ""
	}
	if key == "" {
		return nil, "", http.StatusNotFound, "no routing key: want " + g.opt.Prefix + "<service>/..."
	}
	return nil, key, http.StatusNotFound, "unknown service " + strconv.Quote(key)
}

// statusWriter records the status for metrics. It keeps Flusher, Hijacker
// and friends reachable through Unwrap (http.ResponseController).
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// client is the fast engine's writer of the connection (nil with net/http).
func (g *Gateway) serveService(w http.ResponseWriter, r *http.Request, s *Service, key string, client *fastWriter) {
	sn := s.load()
	if client != nil {
		// Without programs that keep values (set_global could keep a
		// header value) and SLP filters (foreign code), nothing keeps the
		// request beyond this call: the fast engine may reuse its memory.
		client.Recyclable = sn.slp == "" && !sn.keeps
	}
	var ip string
	if client != nil && r.RemoteAddr == client.remote {
		ip = client.ip // computed once per connection
	} else {
		ip = clientIP(r)
	}
	if status, msg, retryAfter := g.screen(r, s, sn, key, ip); status != 0 {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		writeError(w, status, msg)
		return
	}
	if sn.slp != "" {
		sess, err := g.opt.SLPs.Begin(sn.slp)
		if err != nil {
			writeError(w, http.StatusBadGateway, "filter SLP "+strconv.Quote(sn.slp)+" of service "+strconv.Quote(key)+" is not available: "+err.Error())
			return
		}
		defer sess.End()
		if f, ok := sess.SLP().(sdk.Filter); ok {
			f.Filter(w, r, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				g.forward(w, r, s, sn, key, ip, client)
			}))
			return
		}
	}
	g.forward(w, r, s, sn, key, ip, client)
}

// screen runs the checks a request passes before it is forwarded: the
// service has instances, its rate limiter admits it, its programs accept
// it. It returns 0, or the status and message of the refusal (with the
// Retry-After value of a 429).
func (g *Gateway) screen(r *http.Request, s *Service, sn *snapshot, key, ip string) (status int, msg, retryAfter string) {
	if len(sn.ups) == 0 {
		return http.StatusServiceUnavailable, "service " + strconv.Quote(key) + " has no instances", ""
	}
	if l := s.limiter.Load(); l != nil && !l.Allow() {
		s.m.limited.Add(1)
		return http.StatusTooManyRequests, "rate limit of service " + strconv.Quote(key) + " exceeded", limit.RetryAfter(l)
	}
	if len(sn.progs) > 0 {
		env := g.envs.Get().(*program.Env)
		avail := 0
		for _, u := range sn.ups {
			if u.Available() {
				avail++
			}
		}
		env.Reset(r, ip, program.Upstream{Service: key, Instances: len(sn.ups), Available: avail}, *g.globals.Load())
		reason := ""
		for _, p := range sn.progs {
			if reason = p.Eval(env); reason != "" {
				break
			}
		}
		env.Clear()
		g.envs.Put(env)
		if reason != "" {
			s.m.rejected.Add(1)
			return http.StatusBadRequest, reason, ""
		}
	}
	return 0, "", ""
}

// hop-by-hop headers, removed in both directions (RFC 9110 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHop(h http.Header) {
	if c, ok := h["Connection"]; ok {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					h.Del(f)
				}
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

func isUpgrade(r *http.Request) bool {
	// the keys are canonical already: no Header.Get (which canonicalizes)
	u := r.Header["Upgrade"]
	return len(u) > 0 && u[0] != "" && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, k, tok string) bool {
	for _, v := range h[k] {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), tok) {
				return true
			}
		}
	}
	return false
}

func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

var errUpstream5xx = errors.New("upstream answered 5xx")

// plainPath reports whether p is its own escaped form: it starts with a
// slash and holds only bytes that url.URL.EscapedPath (without RawPath)
// leaves as they are.
func plainPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := 0; i < len(p); i++ {
		if !plainPathChar[p[i]] {
			return false
		}
	}
	return true
}

// plainPathChar is pathChar without the bytes EscapedPath escapes
// (!'()*).
var plainPathChar = func() (t [256]bool) {
	t = pathChar
	for _, c := range "!'()*" {
		t[c] = false
	}
	return
}()

// outPath is the path sent upstream.
func (g *Gateway) outPath(p string, sn *snapshot, key string) string {
	if !sn.trim {
		return p
	}
	p = p[len(g.opt.Prefix)+len(key):]
	if p == "" {
		return "/"
	}
	return p
}

var emptyUA = []string{""}

func (g *Gateway) forward(w http.ResponseWriter, r *http.Request, s *Service, sn *snapshot, key, ip string, client *fastWriter) {
	if isUpgrade(r) {
		g.forwardUpgrade(w, r, s, sn, key, ip)
		return
	}
	hashKey := ""
	if sn.cfg.LoadBalance.Strategy == "hash" {
		if sn.hashHdr != "" {
			hashKey = r.Header.Get(sn.hashHdr)
		}
		if hashKey == "" {
			hashKey = ip
		}
	}

	// The body: replayable when absent or small enough to buffer.
	var body []byte
	replayable := true
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		r.Body = nil
	} else if r.ContentLength > 0 && r.ContentLength <= maxReplayBody && sn.retries > 0 {
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			writeError(w, http.StatusBadRequest, "reading request body: "+err.Error())
			return
		}
		body = b
	} else {
		replayable = false
	}

	o := g.outRequest(r, sn, key, ip, client)
	// The answer is relayed without an http.Response when it goes
	// straight to the fast engine's writer (no SLP filter in between)
	// and nothing set response headers yet.
	fw, _ := w.(*fastWriter)
	raw := fw != nil && len(fw.h) == 0
	var skip uint64
	attempts := 0
	for {
		idx := sn.bal.Pick(hashKey, skip)
		if idx < 0 {
			writeError(w, http.StatusServiceUnavailable, "service "+strconv.Quote(key)+" has no available instance")
			return
		}
		if idx < 64 {
			skip |= 1 << uint(idx)
		}
		u := sn.ups[idx]
		done, err := u.admit()
		if err != nil { // opened or half-open quota used since Pick
			continue
		}
		u.inflight.Add(1)
		var resp *http.Response
		var ex *h1Exchange
		if sn.scheme == "http" {
			pool := u.pool.Load()
			o.addr = u.Inst.Address
			o.body = r.Body
			if body != nil {
				o.body = bytes.NewReader(body)
			}
			resp, ex, err = pool.roundTrip(&o, false, raw)
			if err == errStale && (body != nil || r.Body == nil) {
				if body != nil {
					o.body = bytes.NewReader(body)
				}
				resp, ex, err = pool.roundTrip(&o, true, raw)
			}
		} else {
			out := new(http.Request)
			*out = *r
			out.URL = &url.URL{Scheme: sn.scheme, Host: u.Inst.Address, Path: g.outPath(r.URL.Path, sn, key), RawQuery: r.URL.RawQuery}
			if r.URL.RawPath != "" {
				out.URL.RawPath = g.outPath(r.URL.RawPath, sn, key)
			}
			out.RequestURI = ""
			out.Close = false
			out.Header = o.header
			if body != nil {
				out.Body = io.NopCloser(bytes.NewReader(body))
				out.GetBody = nil
			}
			resp, err = sn.transport.RoundTrip(out)
		}
		attempts++
		canRetry := attempts <= sn.retries && replayable
		if err != nil {
			u.inflight.Add(-1)
			if r.Context().Err() != nil || err == errClientGone {
				u.report(done, breaker.ErrExcluded)
				if client != nil {
					// nothing more is written; 499 as nginx counts it
					client.status, client.err = 499, errClientGone
				}
				return // client went away
			}
			u.report(done, err)
			var op *net.OpError
			dialErr := errors.As(err, &op) && op.Op == "dial"
			if canRetry && (dialErr || idempotent(r.Method)) {
				s.m.retries.Add(1)
				continue
			}
			if err == errNoAnswer || transportNoAnswer(err) {
				writeError(w, http.StatusGatewayTimeout, noAnswerMsg(u, key, sn.respTO))
				return
			}
			writeError(w, http.StatusBadGateway, failedMsg(u, key, err))
			return
		}
		var status int
		if ex != nil && ex.raw != nil {
			status = ex.raw.status
		} else {
			status = resp.StatusCode
		}
		if status >= 500 {
			u.report(done, errUpstream5xx)
			if canRetry && idempotent(r.Method) && (status == 502 || status == 503 || status == 504) {
				if resp != nil {
					resp.Body.Close()
				}
				ex.done(false)
				u.inflight.Add(-1)
				s.m.retries.Add(1)
				continue
			}
		} else {
			u.report(done, nil)
		}
		if ex != nil && ex.raw != nil {
			clean := fw.relayRaw(ex.raw, ex.conn.br)
			ex.done(clean && !ex.raw.close)
		} else {
			clean := copyResponse(w, resp)
			ex.done(clean && !resp.Close)
		}
		u.inflight.Add(-1)
		return
	}
}

// transportNoAnswer reports whether err is http.Transport's
// ResponseHeaderTimeout (https upstreams). Its error type is unexported;
// other timeouts (TLS handshake, dial) are 502s and must not match.
func transportNoAnswer(err error) bool {
	return isTimeout(err) && strings.Contains(err.Error(), "timeout awaiting response headers")
}

// failedMsg and noAnswerMsg are the messages of a failed attempt (502) and
// of one past response_header_timeout (504), the same in every engine.
func failedMsg(u *Upstream, key string, err error) string {
	return upstreamName(u, key) + " failed: " + err.Error()
}

func noAnswerMsg(u *Upstream, key string, respTO time.Duration) string {
	return upstreamName(u, key) + " did not answer within " + respTO.String() + " (response_header_timeout)"
}

func upstreamName(u *Upstream, key string) string {
	return "upstream " + u.Inst.ID + " of service " + strconv.Quote(key)
}

// outRequest is r as sent upstream: hop-by-hop headers removed, the
// X-Forwarded headers set, the path trimmed and escaped.
func (g *Gateway) outRequest(r *http.Request, sn *snapshot, key, ip string, client *fastWriter) outReq {
	h := r.Header
	removeHop(h)
	xff := ip
	if prior, ok := h["X-Forwarded-For"]; ok {
		xff = strings.Join(prior, ", ") + ", " + ip
	}
	xproto := "http"
	if r.TLS != nil {
		xproto = "https"
	}
	if sn.scheme != "http" {
		// http.Transport sends what the header map holds
		h["X-Forwarded-For"] = []string{xff}
		h["X-Forwarded-Proto"] = []string{xproto}
		if r.Host != "" {
			h["X-Forwarded-Host"] = []string{r.Host}
		}
		if _, ok := h["User-Agent"]; !ok {
			h["User-Agent"] = emptyUA
		}
	}

	path := g.outPath(r.URL.Path, sn, key)
	rawPath := ""
	if r.URL.RawPath != "" {
		rawPath = g.outPath(r.URL.RawPath, sn, key)
	}
	escaped := path
	if rawPath != "" || !plainPath(path) {
		escaped = (&url.URL{Path: path, RawPath: rawPath}).EscapedPath()
	}
	return outReq{method: r.Method, path: escaped,
		rawQuery: r.URL.RawQuery, host: r.Host, header: h, xff: xff, xproto: xproto,
		cl: r.ContentLength, ctx: r.Context(), client: client, respTO: sn.respTO}
}

// copyResponse sends resp to w; it reports whether the body was read to
// its end (so the upstream connection can be reused).
func copyResponse(w http.ResponseWriter, resp *http.Response) (clean bool) {
	defer resp.Body.Close()
	dst := w.Header()
	removeHop(resp.Header)
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	if len(resp.Trailer) > 0 {
		names := make([]string, 0, len(resp.Trailer))
		for k := range resp.Trailer {
			names = append(names, k)
		}
		dst["Trailer"] = []string{strings.Join(names, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	stream := resp.ContentLength == -1 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	var flusher http.Flusher
	if stream {
		flusher, _ = w.(http.Flusher)
	}
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err != nil {
			clean = err == io.EOF
			break
		}
	}
	bufPool.Put(bp)
	for k, vv := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
	return clean
}

// forwardUpgrade passes a protocol upgrade (WebSocket) through with
// httputil.ReverseProxy, which splices the two connections. It is not
// retried once sent.
func (g *Gateway) forwardUpgrade(w http.ResponseWriter, r *http.Request, s *Service, sn *snapshot, key, ip string) {
	idx := sn.bal.Pick(ip, 0)
	if idx < 0 {
		writeError(w, http.StatusServiceUnavailable, "service "+strconv.Quote(key)+" has no available instance")
		return
	}
	u := sn.ups[idx]
	done, err := u.admit()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "instance "+u.Inst.ID+" of service "+strconv.Quote(key)+" is not available")
		return
	}
	u.inflight.Add(1)
	defer u.inflight.Add(-1)
	var failed error
	rp := &httputil.ReverseProxy{
		Transport: sn.transport,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = sn.scheme
			pr.Out.URL.Host = u.Inst.Address
			pr.Out.URL.Path = g.outPath(pr.In.URL.Path, sn, key)
			pr.Out.URL.RawPath = ""
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			failed = err
			writeError(w, http.StatusBadGateway, failedMsg(u, key, err))
		},
	}
	rp.ServeHTTP(w, r)
	if failed != nil && r.Context().Err() == nil && !errors.Is(failed, context.Canceled) {
		u.report(done, failed)
	} else {
		u.report(done, nil)
	}
}
