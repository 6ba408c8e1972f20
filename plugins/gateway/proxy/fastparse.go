package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"unsafe"
)

// The fast engine parses the common request (HTTP/1.1, origin-form target
// without escapes, a Host, no Transfer-Encoding, Expect or Upgrade, at most
// maxFastHeaders header lines) itself: one copy of the head backs every
// string of the request, so a request costs a handful of allocations
// instead of net/http's dozens. Anything else is left untouched in the
// reader for http.ReadRequest, so the fallback sees exactly what the
// client sent.

const maxFastHeaders = 48

var crlf2 = []byte("\r\n\r\n")

// peekHead returns the buffered request head (through its blank line)
// without consuming it, reading more from the connection while the head is
// incomplete and the buffer has room; before the first such read it calls
// more (if not nil). ok is false when the head does not fit the buffer
// (the caller falls back to http.ReadRequest); err is a read error.
func peekHead(br *bufio.Reader, more func()) (head []byte, ok bool, err error) {
	for {
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, crlf2); i >= 0 {
			return b[:i+4], true, nil
		}
		if br.Buffered() >= br.Size() {
			return nil, false, nil
		}
		if more != nil {
			more()
			more = nil
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			if br.Buffered() > 0 && (err == io.EOF || errors.Is(err, bufio.ErrBufferFull)) {
				return nil, false, nil
			}
			return nil, false, err
		}
	}
}

func bstr(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// tokenChar marks the bytes of an RFC 9110 token.
var tokenChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return
}()

// pathChar marks the bytes a path may hold without a percent-escape:
// unreserved, sub-delims, ':', '@' and '/'. Of these, url.Parse keeps a
// RawPath for "!'()*" (EscapedPath would encode them); see parse.
var pathChar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "-._~!$&'()*+,;=:@/" {
		t[c] = true
	}
	return
}()

// canonicalKey canonicalizes a header name in place (as
// textproto.CanonicalMIMEHeaderKey); false if it is not a token.
func canonicalKey(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	upper := true
	for i, c := range k {
		if !tokenChar[c] {
			return false
		}
		if upper && 'a' <= c && c <= 'z' {
			k[i] = c - ('a' - 'A')
		} else if !upper && 'A' <= c && c <= 'Z' {
			k[i] = c + ('a' - 'A')
		}
		upper = c == '-'
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func validValue(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// fastBody is the body of a request with a Content-Length.
type fastBody struct {
	r *bufio.Reader
	n int64
}

func (b *fastBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.r.Read(p)
	b.n -= int64(n)
	if err == io.EOF && b.n > 0 {
		err = io.ErrUnexpectedEOF
	} else if err == nil && b.n == 0 {
		err = io.EOF
	}
	return n, err
}

func (b *fastBody) Close() error { return nil }

// parseFast builds the request of head (from peekHead) when it is of the
// common kind, else returns nil. The caller discards len(head) bytes from
// the reader on success.
func parseFast(head []byte, br *bufio.Reader) *http.Request {
	return parseFastIn(nil, head, br)
}

// reqArena holds a fast-parsed request and everything it points to. A
// connection reuses its arena for the next request when the handler said
// nothing kept a reference (fastWriter.Recyclable): one allocation less
// per field, and no garbage.
type reqArena struct {
	r    http.Request
	u    url.URL
	v    [8]string
	h    http.Header
	buf  []byte
	body fastBody
}

// parseFastIn is parseFast into ar (nil: a new arena). The request's
// strings point into ar.buf, so a reused arena must not be referenced
// by anything of the previous request.
func parseFastIn(ar *reqArena, head []byte, br *bufio.Reader) *http.Request {
	if ar == nil {
		ar = new(reqArena)
	}
	// every line of buf ends with CRLF (the blank line is dropped)
	ar.buf = append(ar.buf[:0], head[:len(head)-2]...)
	buf := ar.buf
	eol := bytes.IndexByte(buf, '\n')
	if eol < 1 || buf[eol-1] != '\r' {
		return nil
	}
	line := buf[:eol-1]
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return nil
	}
	method := line[:sp1]
	for _, c := range method {
		if c < 'A' || c > 'Z' {
			return nil
		}
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 || string(rest[sp2+1:]) != "HTTP/1.1" {
		return nil
	}
	target := rest[:sp2]
	if target[0] != '/' {
		return nil
	}
	pathEnd := len(target)
	for i, c := range target {
		if c == '?' {
			pathEnd = i
			break
		}
		if !pathChar[c] {
			return nil
		}
	}
	for _, c := range target[pathEnd:] {
		if c <= ' ' || c >= 0x7f || c == '#' {
			return nil
		}
	}
	var rawQuery []byte
	if pathEnd < len(target) {
		rawQuery = target[pathEnd+1:]
	}

	// header lines
	p := buf[eol+1:]
	n := bytes.Count(p, []byte{'\n'})
	if n > maxFastHeaders {
		return nil
	}
	vals := ar.v[:0]
	if n > len(ar.v) {
		vals = make([]string, 0, n)
	}
	h := ar.h
	if h == nil {
		h = make(http.Header, n)
		ar.h = h
	} else if len(h) > 0 {
		clear(h)
	}
	var (
		host   []byte
		hasCL  bool
		cl     int64
		closeC bool
	)
	for len(p) > 0 {
		e := bytes.IndexByte(p, '\n')
		if e < 1 || p[e-1] != '\r' {
			return nil
		}
		l := p[:e-1]
		p = p[e+1:]
		if len(l) == 0 || l[0] == ' ' || l[0] == '\t' {
			return nil
		}
		colon := bytes.IndexByte(l, ':')
		if colon <= 0 {
			return nil
		}
		k, v := l[:colon], trimOWS(l[colon+1:])
		if !canonicalKey(k) || !validValue(v) {
			return nil
		}
		switch bstr(k) {
		case "Host":
			if host != nil || !validHost(v) {
				return nil
			}
			host = v
			continue
		case "Content-Length":
			if hasCL {
				return nil
			}
			n, err := strconv.ParseUint(bstr(v), 10, 63)
			if err != nil || len(v) == 0 || v[0] == '+' {
				return nil
			}
			hasCL, cl = true, int64(n)
		case "Transfer-Encoding", "Expect", "Upgrade":
			return nil
		case "Connection":
			switch {
			case bytes.EqualFold(v, []byte("close")):
				closeC = true
			case bytes.EqualFold(v, []byte("keep-alive")):
			default:
				return nil
			}
		}
		key := bstr(k)
		vals = append(vals, bstr(v))
		i := len(vals) - 1
		if prior, ok := h[key]; ok {
			h[key] = append(prior, vals[i])
		} else {
			h[key] = vals[i : i+1 : i+1]
		}
	}
	if host == nil {
		return nil
	}
	ar.u = url.URL{Path: bstr(target[:pathEnd]), RawQuery: bstr(rawQuery)}
	if bytes.ContainsAny(target[:pathEnd], "!'()*") {
		// EscapedPath would send these percent-encoded; url.Parse keeps
		// the path as received in RawPath, and so must a proxy.
		ar.u.RawPath = ar.u.Path
	}
	r := &ar.r
	*r = http.Request{
		Method:     bstr(method),
		URL:        &ar.u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       bstr(host),
		RequestURI: bstr(target),
		Close:      closeC,
		Body:       http.NoBody,
	}
	if hasCL && cl > 0 {
		r.ContentLength = cl
		ar.body = fastBody{r: br, n: cl}
		r.Body = &ar.body
	}
	return r
}

// validHost accepts the usual host[:port] forms (names, IPv4, [IPv6]).
func validHost(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_') {
			return false
		}
	}
	return true
}

// rawResp is an upstream response head parsed in place in the upstream
// connection's read buffer (valid until the head is discarded), relayed
// to a fastWriter without building an http.Response.
type rawResp struct {
	status int
	cl     int64 // body length to relay (0 for HEAD, 204, 304)
	close  bool  // the upstream closes the connection after it
	head   int   // bytes of the head in the reader
	lines  [maxFastHeaders][2][]byte
	n      int
	date   bool
}

// parseRespFast parses head (from peekHead on the upstream reader) for a
// request of method: an HTTP/1.1 final answer with a Content-Length (or no
// body by its status or method), no Transfer-Encoding, at most
// maxFastHeaders lines and no Connection tokens but close and keep-alive.
// Header names are canonicalized in place. false: use http.ReadResponse.
func parseRespFast(head []byte, method string, rr *rawResp) bool {
	b := head[:len(head)-2]
	eol := bytes.IndexByte(b, '\n')
	if eol < 13 || b[eol-1] != '\r' || string(b[:9]) != "HTTP/1.1 " || !(eol == 13 || b[12] == ' ' && validValue(b[13:eol-1])) {
		return false
	}
	st := b[9:12]
	if st[0] < '2' || st[0] > '9' || st[1] < '0' || st[1] > '9' || st[2] < '0' || st[2] > '9' {
		return false
	}
	rr.status = int(st[0]-'0')*100 + int(st[1]-'0')*10 + int(st[2]-'0')
	rr.head, rr.n, rr.close, rr.date = len(head), 0, false, false
	hasCL := false
	p := b[eol+1:]
	for len(p) > 0 {
		e := bytes.IndexByte(p, '\n')
		if e < 1 || p[e-1] != '\r' || rr.n == maxFastHeaders {
			return false
		}
		l := p[:e-1]
		p = p[e+1:]
		if len(l) == 0 || l[0] == ' ' || l[0] == '\t' {
			return false
		}
		colon := bytes.IndexByte(l, ':')
		if colon <= 0 {
			return false
		}
		k, v := l[:colon], trimOWS(l[colon+1:])
		if !canonicalKey(k) || !validValue(v) {
			return false
		}
		switch bstr(k) {
		case "Content-Length":
			n, err := strconv.ParseUint(bstr(v), 10, 63)
			if hasCL || err != nil || len(v) == 0 || v[0] == '+' {
				return false
			}
			hasCL, rr.cl = true, int64(n)
		case "Transfer-Encoding", "Trailer", "Upgrade":
			return false
		case "Content-Type":
			if bytes.HasPrefix(v, []byte("text/event-stream")) {
				return false // streamed: flushed as it comes
			}
		case "Connection":
			switch {
			case bytes.EqualFold(v, []byte("close")):
				rr.close = true
			case bytes.EqualFold(v, []byte("keep-alive")):
			default:
				return false
			}
			continue
		case "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te":
			continue // hop-by-hop
		case "Date":
			rr.date = true
		}
		rr.lines[rr.n] = [2][]byte{k, v}
		rr.n++
	}
	if method == http.MethodHead || rr.status == http.StatusNoContent || rr.status == http.StatusNotModified {
		rr.cl = 0
	} else if !hasCL {
		return false // delimited by close: the general path handles it
	}
	return true
}
