package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/plugd/plugd/internal/testhost"
)

// v1 → v2 → v3 swaps and an unload under steady concurrent load: no request
// fails except the 404s after the unload, on the management listener and
// on a host-owned plugin listener alike.
func TestSwapUnderLoadLosesNothing(t *testing.T) {
	dataPort := testhost.FreePort(t)
	h := testhost.Start(t, testhost.Options{Config: fmt.Sprintf("plugins:\n  echo:\n    listen: 127.0.0.1:%d\n", dataPort)})
	files := []string{buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2"), buildEcho(t, h, "build-3")}
	h.LoadAPI(t, "echo.v1", files[0])

	var unloaded atomic.Bool
	var ok, failed, after404 atomic.Int64
	seen := sync.Map{}
	var firstErr atomic.Value
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			url := h.URL + "/echo/v1/x"
			if i%2 == 1 {
				url = fmt.Sprintf("http://127.0.0.1:%d/", dataPort)
			}
			for n := 0; n < 50000 && ctx.Err() == nil; n++ {
				resp, err := client.Get(url)
				// Judged after the response: the flag is set before the
				// DELETE is sent, so a 404 seen while it is clear is a loss.
				wasUnloaded := unloaded.Load()
				if err != nil {
					if !wasUnloaded {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == 200:
					ok.Add(1)
					seen.Store(strings.SplitN(string(b), ":", 2)[0], true)
				case resp.StatusCode == 404 && wasUnloaded:
					after404.Add(1)
				default:
					if !wasUnloaded {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %s", resp.StatusCode, b))
					}
				}
			}
		}(i)
	}
	time.Sleep(500 * time.Millisecond)
	for _, f := range files[1:] {
		h.LoadAPI(t, "echo.v1", f)
		time.Sleep(700 * time.Millisecond)
	}
	if code, body := h.Do(t, "GET", "/echo/v1/x", nil); code != 200 || body != "build-3:/x" {
		t.Fatalf("after v3 swap: %d %q", code, body)
	}
	unloaded.Store(true)
	h.Unload(t, "echo.v1")
	time.Sleep(300 * time.Millisecond)
	cancel()
	wg.Wait()

	t.Logf("ok=%d failed=%d 404-after-unload=%d", ok.Load(), failed.Load(), after404.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d requests failed during swaps; first: %v", failed.Load(), firstErr.Load())
	}
	for _, b := range []string{"build-1", "build-2", "build-3"} {
		if _, ok := seen.Load(b); !ok {
			t.Errorf("no response from %s", b)
		}
	}
	if ok.Load() < 100 {
		t.Errorf("only %d successful requests: load too thin to mean anything", ok.Load())
	}
	if code, _ := h.Do(t, "GET", "/echo/v1/x", nil); code != 404 {
		t.Errorf("after unload: %d, want 404", code)
	}
}

// An in-flight request finishes on the old version; its Stop runs after.
func TestSwapDrainsInFlightThenStops(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f1, f2 := buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2")
	h.LoadAPI(t, "echo.v1", f1)
	type result struct {
		code int
		body string
	}
	done := make(chan result)
	go func() {
		resp, err := http.Get(h.URL + "/echo/v1/slow?ms=1500")
		if err != nil {
			done <- result{0, err.Error()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp.StatusCode, string(b)}
	}()
	time.Sleep(300 * time.Millisecond)
	h.LoadAPI(t, "echo.v1", f2)
	if code, body := h.Do(t, "GET", "/echo/v1/x", nil); body != "build-2:/x" {
		t.Fatalf("new requests after swap: %d %q", code, body)
	}
	_, list := h.Do(t, "GET", "/apim/v1/apis", nil)
	if !strings.Contains(list, f1+"\tdraining") {
		t.Errorf("old version not listed as draining during its request:\n%s", list)
	}
	r := <-done
	if r.code != 200 || r.body != "build-1:slow" {
		t.Fatalf("in-flight request: %d %q, want 200 from build-1", r.code, r.body)
	}
	events := filepath.Join(h.DataDir, "plugins", "echo", "events.log")
	eventually(t, "stop hook of build-1", 10*time.Second, func() bool {
		b, _ := os.ReadFile(events)
		return strings.Contains(string(b), "stop build-1 replaced")
	})
	b, _ := os.ReadFile(events)
	if !strings.HasPrefix(string(b), "slow done build-1\nstop build-1 replaced\n") {
		t.Fatalf("events out of order:\n%s", b)
	}
}

// SLP sessions stay on the version they began on; used/using are counted;
// a replaced version is listed as draining until its last session ends.
func TestSLPSessionsPinnedAndCounted(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f1, f2 := buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2")
	h.LoadSLP(t, "echo", f1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws := "ws" + strings.TrimPrefix(h.URL, "http") + "/slp/v1/echo"
	roundTrip := func(c *websocket.Conn, msg string) string {
		t.Helper()
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, b, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	old, _, err := websocket.Dial(ctx, ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(old, "a"); got != "build-1:a" {
		t.Fatalf("got %q", got)
	}
	short, _, _ := websocket.Dial(ctx, ws, nil)
	roundTrip(short, "b")
	short.Close(websocket.StatusNormalClosure, "")
	eventually(t, "used=1 using=1", 5*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return strings.Contains(l, "echo\t1\t1\t"+f1)
	})

	h.LoadSLP(t, "echo", f2)
	nw, _, err := websocket.Dial(ctx, ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(nw, "c"); got != "build-2:c" {
		t.Fatalf("new session: %q", got)
	}
	if got := roundTrip(old, "d"); got != "build-1:d" {
		t.Fatalf("old session moved off its version: %q", got)
	}
	_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
	if !strings.Contains(l, "echo\t1\t1\t"+f1) || !strings.Contains(l, "draining") || !strings.Contains(l, "echo\t0\t1\t"+f2) {
		t.Fatalf("listing during drain:\n%s", l)
	}
	old.Close(websocket.StatusNormalClosure, "")
	eventually(t, "old version gone from the listing", 10*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return !strings.Contains(l, f1)
	})
	nw.Close(websocket.StatusNormalClosure, "")
	eventually(t, "new version used=1 using=0", 5*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return strings.Contains(l, "echo\t1\t0\t"+f2)
	})
	if code, _ := h.Do(t, "DELETE", "/slpm/v1/echo", nil); code != 200 {
		t.Fatal("delete SLP")
	}
	if code, _ := h.Do(t, "GET", "/slp/v1/echo", nil); code != 404 {
		t.Fatalf("session on deleted SLP: %d", code)
	}
}

// A panicking handler is a 500 with a logged stack; a panicking supervised
// goroutine is logged; the host keeps serving.
func TestPluginPanicsDoNotKillHost(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	h.LoadAPI(t, "echo.v1", buildEcho(t, h, "build-1"))
	if code, body := h.Do(t, "GET", "/echo/v1/panic", nil); code != 500 || !strings.Contains(body, "echo.v1") {
		t.Fatalf("panic: %d %q", code, body)
	}
	if code, _ := h.Do(t, "GET", "/echo/v1/gopanic", nil); code != 200 {
		t.Fatal("gopanic")
	}
	eventually(t, "logged goroutine panic", 5*time.Second, func() bool {
		return strings.Contains(h.Log(), "echo goroutine panic")
	})
	if !strings.Contains(h.Log(), "echo handler panic") || !strings.Contains(h.Log(), "goroutine ") {
		t.Error("handler panic stack not logged")
	}
	if code, body := h.Do(t, "GET", "/echo/v1/x", nil); code != 200 || body != "build-1:/x" {
		t.Fatalf("after panics: %d %q", code, body)
	}
}
