package proxy

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/plugd/plugd/plugins/gateway/conf"
)

// failingStack is a Gateway with service "svc" whose one instance answers
// 500 while fail is set; no retries, a breaker tripping after maxFailures.
func failingStack(t *testing.T, fail *atomic.Bool, maxFailures uint32) *Gateway {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(up.Close)
	cfg := conf.Default()
	cfg.ReverseProxy.RetryCount = 0
	cfg.Breaker = conf.Breaker{MaxFailures: maxFailures, HalfOpenMaxRequests: 1, OpenTimeout: "1h"}
	return testGateway(t, up, cfg)
}

// Changing breaker settings keeps each instance's breaker state: an open
// breaker stays open, a closed one keeps its streak of failures.
func TestBreakerSettingsChangeKeepsState(t *testing.T) {
	fail := new(atomic.Bool)
	g := failingStack(t, fail, 2)
	cfg, _, _ := g.Config("svc")
	get := func() int {
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, httptest.NewRequest("GET", "/svc/x", nil))
		return rec.Code
	}
	state := func() string {
		st, _ := g.State("svc")
		return st.UpstreamStates[0].BreakerState
	}
	fail.Store(true)
	get()
	get()
	if s := state(); s != "open" {
		t.Fatalf("after 2 failures: %s", s)
	}
	// a new max_failures must not close the open breaker
	cfg.Breaker.MaxFailures = 3
	if err := g.SetConfig("svc", cfg, false); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "open" {
		t.Fatalf("open breaker after a settings change: %s", s)
	}
	if code := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("open breaker let a request through: %d", code)
	}
	// the new open_timeout applies: half-open as soon as it passes
	cfg.Breaker.OpenTimeout = "1ns"
	if err := g.SetConfig("svc", cfg, false); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "half-open" {
		t.Fatalf("with a 1ns open_timeout: %s", s)
	}
	fail.Store(false)
	if code := get(); code != http.StatusOK {
		t.Fatalf("half-open probe: %d", code)
	}
	if s := state(); s != "closed" {
		t.Fatalf("after a good probe: %s", s)
	}

	// a closed breaker keeps its streak of consecutive failures
	cfg.Breaker = conf.Breaker{MaxFailures: 5, HalfOpenMaxRequests: 1, OpenTimeout: "1h"}
	if err := g.SetConfig("svc", cfg, false); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	get()
	get()
	cfg.Breaker.MaxFailures = 4
	if err := g.SetConfig("svc", cfg, false); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != "closed" {
		t.Fatalf("2 failures, max 4: %s", s)
	}
	get()
	get()
	if s := state(); s != "open" {
		t.Fatalf("2+2 failures, max 4: %s (the streak was lost)", s)
	}
}

// Quiet admission (no breaker calls while closed without failures) keeps
// the breaker's rule: it opens after max_failures consecutive failures,
// and a success in between resets the streak.
func TestBreakerStreakWithQuietAdmission(t *testing.T) {
	fail := new(atomic.Bool)
	g := failingStack(t, fail, 3)
	state := func() string {
		st, _ := g.State("svc")
		return st.UpstreamStates[0].BreakerState
	}
	for i, step := range []struct {
		fail bool
		want string
	}{
		{false, "closed"}, {false, "closed"}, // quiet from here
		{true, "closed"}, {true, "closed"}, {false, "closed"}, // streak reset
		{false, "closed"}, {true, "closed"}, {true, "closed"}, {true, "open"},
	} {
		fail.Store(step.fail)
		rec := httptest.NewRecorder()
		g.ServeHTTP(rec, httptest.NewRequest("GET", "/svc/x", nil))
		if s := state(); s != step.want {
			t.Fatalf("step %d: breaker %s, want %s", i, s, step.want)
		}
	}
}
