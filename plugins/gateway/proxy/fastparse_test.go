package proxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/sdk"
)

// seen is what the upstream observed of a request.
func seen(r *http.Request, body []byte) string {
	var keys []string
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s host=%q cl=%d te=%v body=%q\n", r.Method, r.URL.RequestURI(), r.Host, r.ContentLength, r.TransferEncoding, body)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %q\n", k, r.Header[k])
	}
	return b.String()
}

// TestFastEngineMatchesStd sends the same raw requests through the fast
// engine (own parser, raw response relay) and through net/http's server
// in front of the same gateway, and compares what the upstream saw and
// what the client got.
func TestFastEngineMatchesStd(t *testing.T) {
	got := make(chan string, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen(r, b)
		switch r.URL.Path {
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/notmod":
			w.WriteHeader(http.StatusNotModified)
			return
		case "/close":
			w.Header().Set("Connection", "close")
		case "/hop":
			w.Header().Set("Keep-Alive", "timeout=5")
			w.Header().Set("Proxy-Authenticate", "x")
		case "/chunked":
			w.Write([]byte("a"))
			w.(http.Flusher).Flush()
		case "/status":
			w.WriteHeader(418)
		case "/fail":
			w.WriteHeader(500)
		}
		w.Header().Set("X-Multi", "1")
		w.Header().Add("X-Multi", "2")
		w.Write([]byte("body of " + r.URL.Path))
	}))
	defer up.Close()
	cfg := conf.Default()
	cfg.ReverseProxy.RetryCount = 0
	g := testGateway(t, up, cfg)
	fast := serve(t, &Server{Handler: g})
	std := serve(t, &http.Server{Handler: g})
	evs := &EventServer{GW: g, Fallback: &Server{Handler: g}}
	ev := serve(t, evs)

	reqs := []string{
		"GET /svc/a?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
		"GET /svc/a HTTP/1.1\r\nhost: example.com:80\r\naccept-ENCODING: gzip\r\nX-Dup: 1\r\nX-Dup: 2\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
		"GET /svc/a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-Trim:   spaced \t\r\n\r\n",
		"GET /svc/pct%2Fenc/b HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/sp%20ace HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/sub!del'(im)*s HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /svc/post HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
		"POST /svc/empty HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"PUT /svc/chunk HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HEAD /svc/head HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/nocontent HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/notmod HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/close HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/hop HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/chunked HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/status HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/fail HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/old HTTP/1.0\r\n\r\n",
		"GET /svc/old HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
		"GET /svc/bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"GET /svc/conn HTTP/1.1\r\nHost: h\r\nConnection: X-Hop, keep-alive\r\nX-Hop: gone\r\n\r\n",
		"OPTIONS /svc/opt HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
	}
	// do sends raw on c (a new connection when nil) and returns what the
	// upstream saw and what the client got
	do := func(addr string, c net.Conn, br *bufio.Reader, raw string) (up, resp string) {
		if c == nil {
			var err error
			if c, err = net.Dial("tcp", addr); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br = bufio.NewReader(c)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, raw)
		method := strings.Fields(raw)[0]
		r, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Header.Del("Date")
		var keys []string
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		resp = fmt.Sprintf("%d close=%v cl=%d body=%q", r.StatusCode, r.Close, r.ContentLength, b)
		for _, k := range keys {
			resp += fmt.Sprintf("\n%s: %q", k, r.Header[k])
		}
		select {
		case up = <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("%q: the upstream saw nothing", raw)
		}
		return up, resp
	}
	check := func(raw, fu, fr, su, sr string) {
		t.Helper()
		// engines that relay an answer as it comes send it chunked when
		// the upstream did (net/http's server buffers small ones whole)
		// net/http's server adds a Content-Length to bodies it buffered
		// whole; the fast engine streams them chunked, as a proxy may
		if fu != su {
			t.Errorf("%q: the upstream saw\nfast: %s\nstd:  %s", raw, fu, su)
		}
		if fr != sr && !(strings.Contains(raw, "/chunked") && strings.Contains(fr, `body="abody of /chunked"`)) {
			t.Errorf("%q: the client got\nfast: %s\nstd:  %s", raw, fr, sr)
		}
	}
	wantHandoffs := uint64(0) // the requests the event loops hand over
	for _, raw := range reqs {
		if r, _, _ := parseBoth(t, raw); r == nil || r.ContentLength > maxReplayBody {
			wantHandoffs++
		}
	}
	for _, raw := range reqs {
		fu, fr := do(fast, nil, nil, raw)
		su, sr := do(std, nil, nil, raw)
		eu, er := do(ev, nil, nil, raw)
		check(raw, fu, fr, su, sr)
		check(raw, eu, er, su, sr)
	}
	// (only the Linux engine has loops; elsewhere it is the fast engine)
	if h, ok := any(evs).(interface{ Handoffs() uint64 }); ok && h.Handoffs() != wantHandoffs {
		t.Errorf("the event loops handed over %d connections, want %d", h.Handoffs(), wantHandoffs)
	}
	// the same on one kept-alive connection per engine (the fast engine
	// reuses a request's memory for the next one), twice over so that
	// requests with few headers follow ones with many
	fc, err := net.Dial("tcp", fast)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	sc, err := net.Dial("tcp", std)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	ec, err := net.Dial("tcp", ev)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	fbr, sbr, ebr := bufio.NewReader(fc), bufio.NewReader(sc), bufio.NewReader(ec)
	many := "GET /svc/many HTTP/1.1\r\nHost: h\r\n"
	for i := 0; i < 12; i++ {
		many += fmt.Sprintf("X-H%d: v%d\r\n", i, i)
	}
	many += "\r\n"
	for round := 0; round < 2; round++ {
		for _, raw := range append([]string{many}, reqs...) {
			if strings.Contains(raw, "close") || strings.Contains(raw, "HTTP/1.0") {
				continue // ends the connection
			}
			fu, fr := do(fast, fc, fbr, raw)
			su, sr := do(std, sc, sbr, raw)
			eu, er := do(ev, ec, ebr, raw)
			check(raw, fu, fr, su, sr)
			check(raw, eu, er, su, sr)
		}
	}
}

// A program that keeps a header value (set_global) must not see it
// change when the connection's next request arrives.
func TestProgramKeepsHeaderValue(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	g := testGateway(t, up, conf.Default())
	p, err := program.Compile(program.Spec{Name: "keep", Expr: base64.StdEncoding.EncodeToString([]byte(`set_global("tag", get_header("X-Tag"))`))})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.SetPrograms("svc", []*program.Program{p}); err != nil {
		t.Fatal(err)
	}
	// a second service without programs, served on the same connection
	if err := g.SetConfig("plain", conf.Default(), false); err != nil {
		t.Fatal(err)
	}
	if err := g.SetInstances("plain", []sdk.Instance{{ID: "u", Address: strings.TrimPrefix(up.URL, "http://")}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", serve(t, &Server{Handler: g}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, raw := range []string{
		"GET /svc/x HTTP/1.1\r\nHost: h\r\nX-Tag: first-value\r\n\r\n",
		"GET /svc/x HTTP/1.1\r\nHost: h\r\nX-Tag: 2nd\r\n\r\n",
		// same layout, no program: would overwrite a shared buffer
		"GET /plain HTTP/1.1\r\nHost: h\r\nX-Tag: zzz\r\n\r\n",
		"GET /plain HTTP/1.1\r\nHost: h\r\nX-Tag: yyy\r\n\r\n",
	} {
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%q: %d", raw, resp.StatusCode)
		}
	}
	if got := g.Globals()["tag"]; got != "2nd" {
		t.Fatalf("global tag = %q, want %q", got, "2nd")
	}
}

// parseBoth parses raw with parseFast and http.ReadRequest; fast is nil
// when parseFast declined.
func parseBoth(t testing.TB, raw string) (fast, std *http.Request, stdErr error) {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
	head, ok, err := peekHead(br, nil)
	if err == nil && ok {
		if fast = parseFast(head, br); fast != nil {
			br.Discard(len(head))
		}
	}
	std, stdErr = http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	return fast, std, stdErr
}

func sameRequest(a, b *http.Request) string {
	switch {
	case a.Method != b.Method:
		return "method"
	case a.URL.String() != b.URL.String() || a.URL.Path != b.URL.Path || a.URL.RawPath != b.URL.RawPath || a.URL.RawQuery != b.URL.RawQuery:
		return "url " + a.URL.String() + " vs " + b.URL.String()
	case a.Proto != b.Proto || a.ProtoMajor != b.ProtoMajor || a.ProtoMinor != b.ProtoMinor:
		return "proto"
	case fmt.Sprint(a.Header) != fmt.Sprint(b.Header):
		return fmt.Sprintf("header %v vs %v", a.Header, b.Header)
	case a.Host != b.Host:
		return "host"
	case a.ContentLength != b.ContentLength:
		return "content length"
	case a.Close != b.Close:
		return "close"
	case a.RequestURI != b.RequestURI:
		return "request uri"
	}
	ab, _ := io.ReadAll(a.Body)
	bb, _ := io.ReadAll(b.Body)
	if string(ab) != string(bb) {
		return "body"
	}
	return ""
}

func TestParseFast(t *testing.T) {
	mustFast := []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/a?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
		"GET /svc/a HTTP/1.1\r\nhost: example.com:80\r\naccept-ENCODING: gzip\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nX-Trim:   spaced \t\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"POST /svc/post HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"POST /svc/post HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n",
		"DELETE /a/b/c;p=1/@:x HTTP/1.1\r\nHost: h\r\n\r\n",
	}
	for _, raw := range mustFast {
		fast, std, err := parseBoth(t, raw)
		if err != nil {
			t.Fatalf("%q: ReadRequest: %v", raw, err)
		}
		if fast == nil {
			t.Errorf("%q: not parsed by the fast parser", raw)
			continue
		}
		if d := sameRequest(fast, std); d != "" {
			t.Errorf("%q: %s differs", raw, d)
		}
	}
	mustFallBack := []string{
		"GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n",        // escapes keep a RawPath
		"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",    // absolute form
		"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",            // HTTP/1.0 keep-alive rules
		"GET /a HTTP/1.1\r\n\r\n",                       // no Host: 400 from ReadRequest
		"GET /a HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", // two Hosts
		"GET /a HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
		"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
		"PUT /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"PUT /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: X-Hop\r\n\r\n",
		"get /a HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\nHost: h\n\n",
		"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
	}
	for _, raw := range mustFallBack {
		if fast, _, _ := parseBoth(t, raw); fast != nil {
			t.Errorf("%q: parsed by the fast parser, want the fallback", raw)
		}
	}
}

// FuzzParseFast: whatever parseFast accepts, http.ReadRequest accepts too
// and reads as the same request.
func FuzzParseFast(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /p?q HTTP/1.1\r\nHost: h:1\r\nContent-Length: 3\r\nA: b\r\na: c\r\n\r\nabc",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX:  y \r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		fast, std, err := parseBoth(t, raw)
		if fast == nil {
			return
		}
		if err != nil {
			t.Fatalf("%q: fast parser accepted what ReadRequest refuses: %v", raw, err)
		}
		if d := sameRequest(fast, std); d != "" {
			t.Fatalf("%q: %s differs", raw, d)
		}
	})
}

// FuzzParseRespFast: whatever parseRespFast accepts, http.ReadResponse
// reads as the same status, headers (less hop-by-hop ones), length and
// connection reuse.
func FuzzParseRespFast(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc",
		"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
		"HTTP/1.1 503 \r\nContent-Length: 0\r\nKeep-Alive: timeout=1\r\nDate: x\r\n\r\n",
	} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
		h, ok, err := peekHead(br, nil)
		var rr rawResp
		if err != nil || !ok || !parseRespFast(h, method, &rr) {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(raw)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: fast parser accepted what ReadResponse refuses: %v", raw, err)
		}
		removeHop(resp.Header)
		fh := http.Header{}
		for _, kv := range rr.lines[:rr.n] {
			fh.Add(string(kv[0]), string(kv[1]))
		}
		cl := resp.ContentLength
		if method == http.MethodHead || resp.StatusCode == 204 || resp.StatusCode == 304 {
			cl = 0
		}
		if resp.StatusCode != rr.status || fmt.Sprint(fh) != fmt.Sprint(resp.Header) || cl != rr.cl || resp.Close != rr.close {
			t.Fatalf("%q: fast %d %v cl=%d close=%v; ReadResponse %d %v cl=%d close=%v", raw,
				rr.status, fh, rr.cl, rr.close, resp.StatusCode, resp.Header, cl, resp.Close)
		}
	})
}

func BenchmarkParseFast(b *testing.B) {
	for _, raw := range []string{
		"GET /bench/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
		"GET /svc/api/v1/items?id=42 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n" +
			"Accept: application/json\r\nAccept-Encoding: gzip, deflate\r\nAccept-Language: en-US,en;q=0.9\r\n" +
			"Cookie: session=abcdef0123456789\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\r\n",
	} {
		b.Run(strings.Fields(raw)[1], func(b *testing.B) {
			br := bufio.NewReaderSize(strings.NewReader(raw), 4096)
			head, _, _ := peekHead(br, nil)
			b.ReportAllocs()
			for b.Loop() {
				if parseFast(head, br) == nil {
					b.Fatal("not parsed")
				}
			}
		})
	}
}
