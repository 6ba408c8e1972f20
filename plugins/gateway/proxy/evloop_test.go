//go:build linux

package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/sdk"
)

// eventStack runs upstream <- Gateway <- EventServer and returns the
// server and its address.
func eventStack(t *testing.T, up http.HandlerFunc, cfg conf.Service) (*EventServer, string) {
	t.Helper()
	us := httptest.NewServer(up)
	t.Cleanup(us.Close)
	g := testGateway(t, us, cfg)
	srv := &EventServer{GW: g, Fallback: &Server{Handler: g}}
	return srv, serve(t, srv)
}

func bigBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

// Large answers, with a Content-Length and chunked, reach a client that
// reads slowly whole and in order: the loop stops reading the upstream
// while the client's socket is full and goes on when it drains.
func TestEventLargeAnswersSlowReader(t *testing.T) {
	body := bigBody(12 << 20) // beyond what the socket buffers hold (4 MiB each at most here)
	want := sha256.Sum256(body)
	srv, addr := eventStack(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cl" {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		for off := 0; off < len(body); off += 64 << 10 {
			w.Write(body[off:min(off+64<<10, len(body))])
		}
	}, conf.Default())
	// a small receive window from the start (shrinking it later stalls
	// loopback TCP): the gateway's writes soon find the socket full
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	for _, path := range []string{"/svc/cl", "/svc/chunked"} {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		h := sha256.New()
		buf := make([]byte, 8192)
		var n int64
		for {
			k, err := resp.Body.Read(buf)
			h.Write(buf[:k])
			n += int64(k)
			if n%(64<<10) < 8192 {
				time.Sleep(3 * time.Millisecond) // a slow reader
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s after %d bytes: %v", path, n, err)
			}
		}
		if !bytes.Equal(h.Sum(nil), want[:]) || n != int64(len(body)) {
			t.Fatalf("%s: %d bytes, not the upstream's", path, n)
		}
		if path == "/svc/chunked" && resp.ContentLength != -1 {
			t.Fatalf("chunked answer relayed with Content-Length %d", resp.ContentLength)
		}
	}
	if srv.pauses.Load() == 0 {
		t.Fatal("the upstream was never paused for the slow client")
	}
}

// An upstream that closes a kept-alive connection just as the next
// request arrives on it: the request is sent again on a new connection,
// and the client sees nothing of it.
func TestEventStaleUpstreamConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan int, 10)
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns <- i
			go func(c net.Conn, first bool) {
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, r.Body)
					if first && n == 1 {
						return // the second request on the first connection: closed unanswered
					}
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
			}(c, i == 0)
		}
	}()
	g := New(Options{})
	t.Cleanup(g.Close)
	if err := g.SetConfig("svc", conf.Default(), false); err != nil {
		t.Fatal(err)
	}
	if err := g.SetInstances("svc", []sdk.Instance{{ID: "u", Address: ln.Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, &EventServer{GW: g, Fallback: &Server{Handler: g}, Loops: 1})
	for i := 0; i < 3; i++ {
		resp, err := http.Post("http://"+addr+"/svc/x", "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
	if n := len(conns); n != 2 {
		t.Fatalf("the upstream saw %d connections, want 2 (the stale one and its replacement)", n)
	}
}

// A connection whose requests turn unusual midway (a chunked body, one
// too large to buffer) is handed to the goroutine engine with what it
// sent, and every answer arrives in order.
func TestEventHandoffMidConnection(t *testing.T) {
	srv, addr := eventStack(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d %x", r.URL.Path, len(b), sha256.Sum256(b))
	}, conf.Default())
	big := bigBody(200 << 10)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	raw.WriteString("GET /svc/one HTTP/1.1\r\nHost: x\r\n\r\n")
	raw.WriteString("POST /svc/two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	fmt.Fprintf(&raw, "POST /svc/three HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(big), big)
	raw.WriteString("GET /svc/four HTTP/1.1\r\nHost: x\r\n\r\n")
	go c.Write(raw.Bytes())
	br := bufio.NewReader(c)
	for _, want := range []string{
		fmt.Sprintf("/one 0 %x", sha256.Sum256(nil)),
		fmt.Sprintf("/two 3 %x", sha256.Sum256([]byte("abc"))),
		fmt.Sprintf("/three %d %x", len(big), sha256.Sum256(big)),
		fmt.Sprintf("/four 0 %x", sha256.Sum256(nil)),
	} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("waiting for %q: %v", want, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Fatalf("got %q, want %q", b, want)
		}
	}
	if srv.Handoffs() != 1 {
		t.Fatalf("%d handoffs, want 1", srv.Handoffs())
	}
}

// Shutdown lets a request in flight finish, closes idle connections at
// once, and returns when all is done.
func TestEventShutdown(t *testing.T) {
	release, arrived := make(chan struct{}), make(chan struct{})
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		io.WriteString(w, "done")
	}))
	defer us.Close()
	g := testGateway(t, us, conf.Default())
	srv := &EventServer{GW: g, Fallback: &Server{Handler: g}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	addr := ln.Addr().String()
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /svc/quick HTTP/1.1\r\nHost: x\r\n\r\n")
	ibr := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(ibr, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
	}
	busy, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(busy, "GET /svc/slow HTTP/1.1\r\nHost: x\r\n\r\n")
	select {
	case <-arrived: // the request is in flight
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request never reached the upstream")
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	// the idle connection is closed
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: %d %v, want EOF", n, err)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatalf("the request in flight: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" {
		t.Fatalf("the request in flight got %q", b)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("Serve: %v", err)
	}
}

// Connections idle too long, and requests whose head or (buffered) body
// take too long, are closed.
func TestEventTimeouts(t *testing.T) {
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer us.Close()
	g := testGateway(t, us, conf.Default())
	addr := serve(t, &EventServer{GW: g, Fallback: &Server{Handler: g},
		IdleTimeout: 300 * time.Millisecond, ReadHeaderTimeout: 300 * time.Millisecond})
	for _, sent := range []string{"", "GET /svc/x HTTP/1.1\r\nHo", "POST /svc/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, sent)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after %q: %d %v, want EOF", sent, n, err)
		}
		c.Close()
	}
}

// Many clients at once on two loops, with keep-alive, bodies both ways
// and a service whose instances answer 502 at times (retried): every
// answer is the right one.
func TestEventConcurrentClients(t *testing.T) {
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Path", r.URL.Path)
		w.Write(b)
	}))
	defer us.Close()
	g := testGateway(t, us, conf.Default())
	addr := serve(t, &EventServer{GW: g, Fallback: &Server{Handler: g}, Loops: 2})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				path := fmt.Sprintf("/svc/w%d/%d", w, i)
				body := strings.Repeat(fmt.Sprint(w, i), i%50)
				resp, err := client.Post("http://"+addr+path, "text/plain", strings.NewReader(body))
				if err != nil {
					errs <- err
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				// the default config trims the routing key
				if resp.StatusCode != 200 || string(b) != body || resp.Header.Get("X-Path") != strings.TrimPrefix(path, "/svc") {
					errs <- fmt.Errorf("%s: %d %q %q", path, resp.StatusCode, resp.Header.Get("X-Path"), b)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Random sequences of requests, pipelined on one connection, get the same
// answers from the event engine as from net/http's server: requests the
// loops take, ones that hand the connection over midway (chunked and
// large bodies, odd heads), answers of every framing.
func TestEventPipelinedMixMatchesStd(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		sum := fmt.Sprintf("%s %s %d %x", r.Method, r.URL.RequestURI(), len(b), sha256.Sum256(b))
		switch {
		case strings.HasPrefix(r.URL.Path, "/chunked"):
			w.Write([]byte(sum))
			w.(http.Flusher).Flush()
			w.Write([]byte(" and more"))
		case strings.HasPrefix(r.URL.Path, "/big"):
			w.Header().Set("X-Sum", sum)
			w.Write(bigBody(100 << 10))
		case strings.HasPrefix(r.URL.Path, "/nocontent"):
			w.Header().Set("X-Sum", sum)
			w.WriteHeader(http.StatusNoContent)
		case strings.HasPrefix(r.URL.Path, "/teapot"):
			w.WriteHeader(418)
			w.Write([]byte(sum))
		default:
			w.Write([]byte(sum))
		}
	}))
	defer up.Close()
	cfg := conf.Default()
	cfg.ReverseProxy.RetryCount = 0
	g := testGateway(t, up, cfg)
	ev := serve(t, &EventServer{GW: g, Fallback: &Server{Handler: g}, Loops: 2})
	std := serve(t, &http.Server{Handler: g})

	big := string(bigBody(80 << 10))
	templates := []string{
		"GET /svc/a?i=%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/chunked/%d HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
		"GET /svc/big/%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"HEAD /svc/big/%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/nocontent/%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/teapot/%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /svc/post/%d HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
		"POST /svc/empty/%d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"PUT /svc/chunk/%d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /svc/large/%d HTTP/1.1\r\nHost: h\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + big,
		"GET /svc/pct%%20%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/hdr/%d HTTP/1.1\r\nHost: h\r\nx-lower: v\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n",
		"GET /nosuch/%d HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /svc/old/%d HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
	}
	// answers reads n answers from c and describes them
	answers := func(addr string, raw string, methods []string) []string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		go io.WriteString(c, raw)
		br := bufio.NewReader(c)
		var out []string
		for _, m := range methods {
			resp, err := http.ReadResponse(br, &http.Request{Method: m})
			if err != nil {
				out = append(out, "error: "+err.Error())
				return out
			}
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				out = append(out, "body error: "+err.Error())
				return out
			}
			out = append(out, fmt.Sprintf("%d sum=%q len=%d %x", resp.StatusCode, resp.Header.Get("X-Sum"), len(b), sha256.Sum256(b)))
		}
		return out
	}
	seed := time.Now().UnixNano()
	rnd := rand.New(rand.NewPCG(uint64(seed), 1))
	for round := 0; round < 12; round++ {
		var raw strings.Builder
		var methods []string
		for i := 0; i < 2+rnd.IntN(12); i++ {
			tpl := templates[rnd.IntN(len(templates))]
			fmt.Fprintf(&raw, tpl, i)
			methods = append(methods, strings.Fields(tpl)[0])
		}
		e, s := answers(ev, raw.String(), methods), answers(std, raw.String(), methods)
		if strings.Join(e, "\n") != strings.Join(s, "\n") {
			t.Fatalf("seed %d round %d: requests\n%q\nevent engine:\n%s\nnet/http:\n%s", seed, round, raw.String(),
				strings.Join(e, "\n"), strings.Join(s, "\n"))
		}
	}
}

// A panic while a loop handles a request closes that connection only:
// the loop, its other connections and the process go on.
func TestEventPanicClosesOnlyItsConnection(t *testing.T) {
	evTestHook = func(r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/boom") {
			panic("boom")
		}
	}
	t.Cleanup(func() { evTestHook = nil }) // after the server's cleanup: its loops are gone
	us := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer us.Close()
	g := testGateway(t, us, conf.Default())
	addr := serve(t, &EventServer{GW: g, Fallback: &Server{Handler: g}, Loops: 1})
	// a kept-alive connection on the same (single) loop before the panic
	other, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	obr := bufio.NewReader(other)
	get := func(c net.Conn, br *bufio.Reader, path string) (string, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if b, err := get(other, obr, "/svc/x"); err != nil || b != "ok" {
		t.Fatalf("before: %q %v", b, err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := get(c, bufio.NewReader(c), "/svc/boom"); err == nil {
		t.Fatal("the panicking request got an answer")
	}
	if b, err := get(other, obr, "/svc/x"); err != nil || b != "ok" {
		t.Fatalf("the other connection after the panic: %q %v", b, err)
	}
	resp, err := http.Get("http://" + addr + "/svc/x")
	if err != nil {
		t.Fatalf("a new connection after the panic: %v", err)
	}
	resp.Body.Close()
}
