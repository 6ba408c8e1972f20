package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/sdk"
)

// testGateway is a Gateway with one service "svc" of one instance at
// upstream's address, configured with cfg.
func testGateway(t *testing.T, upstream *httptest.Server, cfg conf.Service) *Gateway {
	t.Helper()
	g := New(Options{})
	t.Cleanup(g.Close)
	if err := g.SetConfig("svc", cfg, false); err != nil {
		t.Fatal(err)
	}
	if err := g.SetInstances("svc", []sdk.Instance{{ID: "u", Address: strings.TrimPrefix(upstream.URL, "http://")}}); err != nil {
		t.Fatal(err)
	}
	return g
}

type server interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// serve runs srv on a loopback port until the test ends, then checks that
// it shut down cleanly; it returns the address.
func serve(t *testing.T, srv server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != ErrServerClosed {
			t.Errorf("Serve returned %v", err)
		}
	})
	return ln.Addr().String()
}

// startStack runs upstream <- Gateway <- Server on loopback and returns
// the server's address.
func startStack(t *testing.T, engine string, up http.HandlerFunc) string {
	t.Helper()
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	return serve(t, newServer(engine, testGateway(t, us, conf.Default())))
}

// ownEngines are the gateway's own HTTP servers.
var ownEngines = []string{"fast", "event"}

func newServer(engine string, g *Gateway) server {
	switch engine {
	case "std":
		return &http.Server{Handler: g}
	case "event":
		return &EventServer{GW: g, Fallback: &Server{Handler: g}}
	}
	return &Server{Handler: g}
}

func forEngine(t *testing.T, engines []string, f func(t *testing.T, engine string)) {
	for _, e := range engines {
		t.Run(e, func(t *testing.T) { f(t, e) })
	}
}

func TestServerBodiesBothWays(t *testing.T) {
	forEngine(t, ownEngines, func(t *testing.T, engine string) {
		addr := startStack(t, engine, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			switch r.URL.Path {
			case "/stream":
				for i := 0; i < 3; i++ {
					fmt.Fprintf(w, "part%d;", i)
					w.(http.Flusher).Flush()
				}
			case "/empty":
				w.WriteHeader(http.StatusNoContent)
			default:
				w.Header().Set("X-Len", fmt.Sprint(len(b), r.ContentLength, r.TransferEncoding))
				w.Write(b)
			}
		})
		c := &http.Client{}
		// chunked request body (unknown length), streamed response
		resp, err := c.Post("http://"+addr+"/svc/echo", "text/plain", io.MultiReader(strings.NewReader("abc"), strings.NewReader("def")))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "abcdef" || resp.Header.Get("X-Len") != "6 -1 [chunked]" {
			t.Fatalf("chunked echo: %q %q", b, resp.Header.Get("X-Len"))
		}
		resp, err = c.Get("http://" + addr + "/svc/stream")
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "part0;part1;part2;" {
			t.Fatalf("stream: %q", b)
		}
		req, _ := http.NewRequest("HEAD", "http://"+addr+"/svc/echo", nil)
		resp, err = c.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("HEAD: %v %v", resp, err)
		}
		resp.Body.Close()
		resp, err = c.Get("http://" + addr + "/svc/empty")
		if err != nil || resp.StatusCode != 204 {
			t.Fatalf("204: %v %v", resp, err)
		}
		resp.Body.Close()
		// 100-continue
		req, _ = http.NewRequest("PUT", "http://"+addr+"/svc/echo", strings.NewReader("continued"))
		req.Header.Set("Expect", "100-continue")
		resp, err = (&http.Client{Transport: &http.Transport{ExpectContinueTimeout: 5 * time.Second}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "continued" {
			t.Fatalf("100-continue: %q", b)
		}
	})
}

func TestServerPipeliningAndHTTP10(t *testing.T) {
	forEngine(t, ownEngines, func(t *testing.T, engine string) {
		addr := startStack(t, engine, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.URL.Path) })
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /svc/one HTTP/1.1\r\nHost: x\r\n\r\nGET /svc/two HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(conn)
		for _, want := range []string{"/one", "/two"} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if string(b) != want {
				t.Fatalf("pipelined: %q, want %q", b, want)
			}
		}
		// HTTP/1.0 without keep-alive: answered, then closed
		c2, _ := net.Dial("tcp", addr)
		defer c2.Close()
		io.WriteString(c2, "GET /svc/old HTTP/1.0\r\n\r\n")
		all, _ := io.ReadAll(c2)
		if !strings.HasPrefix(string(all), "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(string(all), "/old") {
			t.Fatalf("HTTP/1.0: %q", all)
		}
		// garbage gets 400 and a close
		c3, _ := net.Dial("tcp", addr)
		defer c3.Close()
		io.WriteString(c3, "NOT HTTP\r\n\r\n")
		all, _ = io.ReadAll(c3)
		if !strings.HasPrefix(string(all), "HTTP/1.1 400") {
			t.Fatalf("garbage: %q", all)
		}
	})
}

func TestServerShortUpstreamBodyClosesConnection(t *testing.T) {
	forEngine(t, ownEngines, func(t *testing.T, engine string) {
		addr := startStack(t, engine, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "only a part")
			// the handler returns early: the upstream connection closes short
		})
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /svc/x HTTP/1.1\r\nHost: x\r\n\r\n")
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		all, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("connection not closed: %v", err)
		}
		if !strings.Contains(string(all), "Content-Length: 100") || !strings.HasSuffix(string(all), "only a part") {
			t.Fatalf("got %q", all)
		}
	})
}

// A client that disconnects while the upstream is still working cancels
// the upstream request: the gateway closes the upstream connection (the
// upstream's request context ends) instead of waiting for the answer.
func TestClientGoneCancelsUpstream(t *testing.T) {
	for _, engine := range []string{"fast", "std", "event"} {
		t.Run(engine, func(t *testing.T) {
			started := make(chan struct{}, 1)
			canceled := make(chan bool, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/quick" {
					io.WriteString(w, "quick")
					return
				}
				started <- struct{}{}
				select {
				case <-r.Context().Done():
					canceled <- true
				case <-time.After(20 * time.Second):
					canceled <- false
				}
			}))
			defer up.Close()
			g := testGateway(t, up, conf.Default())
			addr := serve(t, newServer(engine, g))
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			// a quick exchange first: the slow one then runs on a kept-alive
			// connection of both sides, as under load
			io.WriteString(c, "GET /svc/quick HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			io.WriteString(c, "GET /svc/slow HTTP/1.1\r\nHost: x\r\n\r\n")
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream never got the request")
			}
			c.Close()
			select {
			case ok := <-canceled:
				if !ok {
					t.Fatal("the upstream request was not canceled")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream request was not canceled within 10s of the client's disconnect")
			}
			// the gateway still serves
			resp, err = http.Get("http://" + addr + "/svc/quick")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "quick" {
				t.Fatalf("after the cancel: %q", b)
			}
		})
	}
}

// failingListener fails its first Accepts as a process out of file
// descriptors does.
type failingListener struct {
	net.Listener
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// Running out of file descriptors is passing: Serve backs off and goes on
// (it used to return, which ended the data plane for good).
func TestServeSurvivesEMFILE(t *testing.T) {
	forEngine(t, ownEngines, func(t *testing.T, engine string) {
		us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
		defer us.Close()
		srv := newServer(engine, testGateway(t, us, conf.Default()))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(&failingListener{Listener: ln, fails: 3}) }()
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + ln.Addr().String() + "/svc/x")
		if err != nil {
			t.Fatalf("after EMFILE: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Fatalf("after EMFILE: %q", b)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; err != ErrServerClosed {
			t.Fatalf("Serve: %v", err)
		}
	})
}

// A request head beyond 1 MiB gets 431, as from net/http, and a head just
// under the limit is served.
func TestHeadTooLarge(t *testing.T) {
	forEngine(t, allEngines, func(t *testing.T, engine string) {
		addr := startStack(t, engine, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, len(r.Header.Get("X-Big")))
		})
		for _, c := range []struct {
			size int
			want int
		}{{900 << 10, 200}, {1100 << 10, 431}} {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			go func() { // the server may answer before it has read it all
				fmt.Fprintf(conn, "GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", c.size))
			}()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("%d-byte header: %v", c.size, err)
			}
			b, _ := io.ReadAll(resp.Body)
			conn.Close()
			if resp.StatusCode != c.want {
				t.Fatalf("%d-byte header: %d %q, want %d", c.size, resp.StatusCode, b, c.want)
			}
			if c.want == 200 && string(b) != fmt.Sprint(c.size) {
				t.Fatalf("%d-byte header: upstream saw %s bytes", c.size, b)
			}
		}
	})
}
