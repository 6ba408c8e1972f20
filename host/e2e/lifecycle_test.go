package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/plugd/plugd/internal/testhost"
)

// Stop learns why it runs (replaced, unloaded, shutdown), and after the final
// unload the host removes the registry entries the plugin left behind, while
// a swap keeps them for the next version.
func TestStopReasonsAndRegistryCleanup(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f1, f2, f3 := buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2"), buildEcho(t, h, "build-3")
	events := filepath.Join(h.DataDir, "plugins", "echo", "events.log")
	waitEvent := func(line string) {
		t.Helper()
		eventually(t, "event "+line, 10*time.Second, func() bool {
			b, _ := os.ReadFile(events)
			return strings.Contains(string(b), line+"\n")
		})
	}
	services := func() string {
		t.Helper()
		code, body := h.Do(t, "GET", "/echo/v1/services", nil)
		if code != 200 {
			t.Fatalf("services: %d %s", code, body)
		}
		return body
	}

	h.LoadAPI(t, "echo.v1", f1)
	if code, body := h.Do(t, "GET", "/echo/v1/register?id=a", nil); code != 200 {
		t.Fatalf("register: %d %s", code, body)
	}
	h.LoadAPI(t, "echo.v1", f2)
	waitEvent("stop build-1 replaced")
	if got := services(); got != "a\n" {
		t.Fatalf("after a swap the registry holds %q, want the entry kept", got)
	}

	h.Unload(t, "echo.v1")
	waitEvent("stop build-2 unloaded")
	h.LoadAPI(t, "echo.v1", f3)
	if got := services(); got != "" {
		t.Fatalf("after unload the registry still holds %q", got)
	}

	h.Restart(t)
	waitEvent("stop build-3 shutdown")
	b, _ := os.ReadFile(events)
	want := "stop build-1 replaced\nstop build-2 unloaded\nstop build-3 shutdown\n"
	if string(b) != want {
		t.Fatalf("events:\n%s\nwant:\n%s", b, want)
	}
}

// Sessions that one plugin begins on another's SLP (as the gateway does for
// its filters) are counted in the SLP listing like WebSocket sessions.
func TestSLPSessionsBegunByPlugins(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f := buildEcho(t, h, "build-1")
	h.LoadAPI(t, "echo.v1", f)
	h.LoadSLP(t, "echo", f)

	if code, body := h.Do(t, "GET", "/echo/v1/begin?slp=echo&ms=0", nil); code != 200 || body != "session ended" {
		t.Fatalf("begin: %d %q", code, body)
	}
	done := make(chan string, 1)
	go func() { // not h.Do: t.Fatal must not run off the test goroutine
		resp, err := http.Get(h.URL + "/echo/v1/begin?slp=echo&ms=2000")
		if err != nil {
			done <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- string(b)
	}()
	eventually(t, "used=1 using=1", 5*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return strings.Contains(l, "echo\t1\t1\t"+f)
	})
	if body := <-done; body != "session ended" {
		t.Fatalf("held session: %q", body)
	}
	eventually(t, "used=2 using=0", 5*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return strings.Contains(l, "echo\t2\t0\t"+f)
	})
	if code, _ := h.Do(t, "GET", "/echo/v1/begin?slp=nosuch", nil); code != 404 {
		t.Fatalf("session of an unknown SLP: %d, want 404", code)
	}
}

// Start and Stop hooks that ignore their deadline fail the load or are left
// behind; they never wedge the host's loads, listings or shutdown.
func TestHooksThatHang(t *testing.T) {
	h := testhost.Start(t, testhost.Options{Config: "stop_timeout: 1s\n"})
	hangStart, hangStop, good := buildEcho(t, h, "hang-start"), buildEcho(t, h, "hang-stop"), buildEcho(t, h, "good")

	code, body := h.Do(t, "POST", "/apim/v1/echo.v1?file="+hangStart, nil)
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "Start did not return within its deadline") {
		t.Fatalf("load with a hanging Start: %d %q, want 422", code, body)
	}
	h.LoadAPI(t, "echo.v1", hangStop)
	h.LoadAPI(t, "echo.v1", good) // retires hang-stop, whose Stop never returns
	if code, body := h.Do(t, "GET", "/echo/v1/x", nil); code != 200 || body != "good:/x" {
		t.Fatalf("after the swap: %d %q", code, body)
	}
	h.LoadAPI(t, "echo.v1", hangStop)
	start := time.Now()
	h.Stop() // fails the test if plugd does not exit within 60s
	t.Logf("shutdown with a hanging Stop took %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(h.Log(), "Stop did not return within its deadline") {
		t.Fatalf("the hanging Stop was not logged:\n%s", h.Log())
	}
}

// A session still open on a replaced SLP version when its drain time is up
// is closed with "going away" (so the client reconnects to the new version)
// before the old version stops; new sessions were on the new version all
// along.
func TestSessionsEndAtDrainDeadline(t *testing.T) {
	h := testhost.Start(t, testhost.Options{DrainTimeout: "2s"})
	f1, f2 := buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2")
	h.LoadSLP(t, "echo", f1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws := "ws" + strings.TrimPrefix(h.URL, "http") + "/slp/v1/echo"
	old, _, err := websocket.Dial(ctx, ws, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.CloseNow()
	if err := old.Write(ctx, websocket.MessageText, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, b, err := old.Read(ctx); err != nil || string(b) != "build-1:a" {
		t.Fatalf("first reply: %q %v", b, err)
	}
	h.LoadSLP(t, "echo", f2)
	_, _, err = old.Read(ctx) // blocks until the host closes the session
	if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
		t.Fatalf("old session ended with %v (status %d), want going away (1001)", err, got)
	}
	eventually(t, "old version gone from the listing", 10*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/slpm/v1/slps", nil)
		return !strings.Contains(l, f1)
	})
}

// Host.Draining closes when a swap begins, so a long-lived response can end
// at once; one that ignores it is canceled at the drain deadline.
func TestLongRequestsEndOnDrain(t *testing.T) {
	h := testhost.Start(t, testhost.Options{DrainTimeout: "3s"})
	f1, f2 := buildEcho(t, h, "build-1"), buildEcho(t, h, "build-2")
	h.LoadAPI(t, "echo.v1", f1)
	type result struct {
		body string
		took time.Duration
	}
	get := func(path string) <-chan result {
		ch := make(chan result, 1)
		go func() {
			start := time.Now()
			resp, err := http.Get(h.URL + path)
			if err != nil {
				ch <- result{err.Error(), time.Since(start)}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ch <- result{string(b), time.Since(start)}
		}()
		return ch
	}
	polite, stubborn := get("/echo/v1/poll?polite=1"), get("/echo/v1/poll")
	eventually(t, "both polls running", 10*time.Second, func() bool {
		_, l := h.Do(t, "GET", "/apim/v1/apis", nil, "Accept", "application/json")
		return strings.Contains(l, `"using":2`)
	})
	h.LoadAPI(t, "echo.v1", f2)
	if r := <-polite; r.body != "poll ended: draining" {
		t.Fatalf("polite poll: %q", r.body)
	}
	if r := <-stubborn; r.body != "poll ended: canceled" {
		t.Fatalf("stubborn poll: %q", r.body)
	}
}
