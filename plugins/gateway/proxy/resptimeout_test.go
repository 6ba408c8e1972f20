package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/sdk"
)

var allEngines = []string{"std", "fast", "event"}

// hangingUpstream accepts connections and reads requests but never
// answers; it reports each connection's close on closed.
func hangingUpstream(t *testing.T) (addr string, closed <-chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{}, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c) // until the gateway closes it
				c.Close()
				ch <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ch
}

func get(t *testing.T, cl *http.Client, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

// An upstream that does not begin its answer within
// response_header_timeout gets 504, its connection is closed, and the
// client's connection goes on. Slower bodies and answers within the limit
// are not cut.
func TestResponseHeaderTimeout(t *testing.T) {
	forEngine(t, allEngines, func(t *testing.T, engine string) {
		t.Parallel() // mostly waiting
		hang, closed := hangingUpstream(t)
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/slow":
				time.Sleep(100 * time.Millisecond)
				io.WriteString(w, "slow")
			case "/trickle": // the head at once, the body over 3 limits
				w.(http.Flusher).Flush()
				for i := 0; i < 3; i++ {
					time.Sleep(300 * time.Millisecond)
					io.WriteString(w, "part;")
					w.(http.Flusher).Flush()
				}
			default:
				io.WriteString(w, "quick")
			}
		}))
		t.Cleanup(up.Close)
		cfg := conf.Default()
		cfg.ReverseProxy.RetryCount = 0
		cfg.ReverseProxy.ResponseHeaderTimeout = "300ms"
		g := New(Options{})
		t.Cleanup(g.Close)
		for name, addr := range map[string]string{"svc": strings.TrimPrefix(up.URL, "http://"), "dead": hang} {
			if err := g.SetConfig(name, cfg, false); err != nil {
				t.Fatal(err)
			}
			if err := g.SetInstances(name, []sdk.Instance{{ID: name + "-1", Address: addr}}); err != nil {
				t.Fatal(err)
			}
		}
		base := "http://" + serve(t, newServer(engine, g))
		cl := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}, Timeout: 10 * time.Second}
		t.Cleanup(cl.CloseIdleConnections)

		for i := 0; i < 2; i++ { // the second on a kept-alive connection
			start := time.Now()
			code, body := get(t, cl, "GET", base+"/dead/x")
			if code != http.StatusGatewayTimeout || !strings.Contains(body, "did not answer within 300ms") {
				t.Fatalf("hanging upstream: %d %s", code, body)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("504 after %v, want about 300ms", d)
			}
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("the connection to the hanging upstream was not closed")
			}
		}
		for _, c := range []struct{ path, want string }{
			{"/svc/quick", "quick"}, {"/svc/slow", "slow"}, {"/svc/trickle", "part;part;part;"},
		} {
			if code, body := get(t, cl, "GET", base+c.path); code != 200 || body != c.want {
				t.Fatalf("GET %s: %d %q, want 200 %q", c.path, code, body, c.want)
			}
		}

		// "0s" turns the limit off
		cfg.ReverseProxy.ResponseHeaderTimeout = "0s"
		if err := g.SetConfig("dead", cfg, false); err != nil {
			t.Fatal(err)
		}
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /dead/x HTTP/1.1\r\nHost: x\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
			t.Fatalf("with response_header_timeout 0s: answered %d within 1s, want no answer", resp.StatusCode)
		}
	})
}

// A timed-out idempotent request goes to another instance; a POST does
// not, and gets 504.
func TestResponseHeaderTimeoutRetries(t *testing.T) {
	forEngine(t, allEngines, func(t *testing.T, engine string) {
		t.Parallel() // mostly waiting
		hang, _ := hangingUpstream(t)
		up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		}))
		t.Cleanup(up.Close)
		cfg := conf.Default()
		cfg.ReverseProxy.RetryCount = 1
		cfg.ReverseProxy.ResponseHeaderTimeout = "200ms"
		cfg.Breaker.MaxFailures = 100 // keep the hanging instance in the rotation
		g := New(Options{})
		t.Cleanup(g.Close)
		if err := g.SetConfig("svc", cfg, false); err != nil {
			t.Fatal(err)
		}
		if err := g.SetInstances("svc", []sdk.Instance{
			{ID: "hang", Address: hang}, {ID: "ok", Address: strings.TrimPrefix(up.URL, "http://")}}); err != nil {
			t.Fatal(err)
		}
		base := "http://" + serve(t, newServer(engine, g))
		cl := &http.Client{Timeout: 10 * time.Second}
		t.Cleanup(cl.CloseIdleConnections)
		for i := 0; i < 4; i++ {
			if code, body := get(t, cl, "GET", base+"/svc/x"); code != 200 || body != "ok" {
				t.Fatalf("GET %d: %d %q, want 200 from the other instance", i, code, body)
			}
		}
		timedOut := 0
		for i := 0; i < 4; i++ {
			code, body := get(t, cl, "POST", base+"/svc/x")
			switch {
			case code == 200 && body == "ok":
			case code == http.StatusGatewayTimeout && strings.Contains(body, `upstream hang of service \"svc\" did not answer within 200ms`):
				timedOut++
			default:
				t.Fatalf("POST %d: %d %q", i, code, body)
			}
		}
		if timedOut == 0 {
			t.Fatal("no POST reached the hanging instance (round-robin over 2 instances)")
		}
		if n := g.lookup("svc").m.retries.Load(); n < 1 {
			t.Fatalf("retries counted: %d", n)
		}
	})
}

// https upstreams go through http.Transport, whose ResponseHeaderTimeout
// error must be told apart from its other timeouts.
func TestResponseHeaderTimeoutHTTPS(t *testing.T) {
	forEngine(t, allEngines, func(t *testing.T, engine string) {
		t.Parallel()
		up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/hang" {
				<-r.Context().Done()
				return
			}
			io.WriteString(w, "tls")
		}))
		t.Cleanup(up.Close)
		cfg := conf.Default()
		cfg.ReverseProxy.RetryCount = 0
		cfg.ReverseProxy.Scheme = "https"
		cfg.ReverseProxy.ResponseHeaderTimeout = "300ms"
		g := New(Options{})
		t.Cleanup(g.Close)
		if err := g.SetConfig("svc", cfg, false); err != nil {
			t.Fatal(err)
		}
		if err := g.SetInstances("svc", []sdk.Instance{{ID: "u", Address: strings.TrimPrefix(up.URL, "https://")}}); err != nil {
			t.Fatal(err)
		}
		// trust the test server's certificate (there is no CA setting)
		g.lookup("svc").load().transport.TLSClientConfig.RootCAs = up.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
		base := "http://" + serve(t, newServer(engine, g))
		cl := &http.Client{Timeout: 10 * time.Second}
		t.Cleanup(cl.CloseIdleConnections)
		if code, body := get(t, cl, "GET", base+"/svc/x"); code != 200 || body != "tls" {
			t.Fatalf("https upstream: %d %q", code, body)
		}
		code, body := get(t, cl, "GET", base+"/svc/hang")
		if code != http.StatusGatewayTimeout || !strings.Contains(body, "did not answer within 300ms") {
			t.Fatalf("hanging https upstream: %d %s", code, body)
		}
	})
}
