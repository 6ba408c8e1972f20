// Package e2e drives the gateway plugin inside the real plugd host, built
// by the real pcompile, against real upstream servers on loopback.
package e2e

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/plugd/plugd/internal/testhost"
)

const password = "s3cret"

func md5hex(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }

// upstream is a real HTTP server that records what reaches it.
type upstream struct {
	id     string
	srv    *httptest.Server
	hits   atomic.Int64
	status atomic.Int32 // answer this status when non-zero
	delay  atomic.Int64 // ns to sleep per request
	lastMu sync.Mutex
	last   *http.Request
}

func newUpstream(t *testing.T, id string) *upstream {
	u := &upstream{id: id}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ws" {
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte(id+":"), msg...)); err != nil {
					return
				}
			}
		}
		u.hits.Add(1)
		u.lastMu.Lock()
		u.last = r.Clone(context.Background())
		u.lastMu.Unlock()
		if d := u.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		if s := u.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			fmt.Fprintf(w, "%s failing", id)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", id, r.URL.RequestURI(), body)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) addr() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) lastReq() *http.Request {
	u.lastMu.Lock()
	defer u.lastMu.Unlock()
	return u.last
}

type gw struct {
	t    *testing.T
	h    *testhost.Host
	data string // data plane base URL
	auth string
	c    *http.Client
}

type envelope struct {
	Message string          `json:"message"`
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data"`
}

func (g *gw) call(method, path, body string) (int, envelope) {
	g.t.Helper()
	req, err := http.NewRequest(method, g.h.URL+"/gateway/v1"+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	if g.auth != "" {
		req.Header.Set("Authorization", g.auth)
	}
	resp, err := g.c.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e envelope
	if err := json.Unmarshal(raw, &e); err != nil {
		g.t.Fatalf("%s %s: %d, not the envelope: %s", method, path, resp.StatusCode, raw)
	}
	return resp.StatusCode, e
}

func (g *gw) ok(method, path, body string) json.RawMessage {
	g.t.Helper()
	st, e := g.call(method, path, body)
	if st != 200 || e.Code != 0 || e.Message != "success" {
		g.t.Fatalf("%s %s %s: %d %+v", method, path, body, st, e)
	}
	return e.Data
}

func (g *gw) get(path string, hdr ...string) (int, string, http.Header) {
	g.t.Helper()
	req, _ := http.NewRequest("GET", g.data+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := g.c.Do(req)
	if err != nil {
		g.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func share(n, total int64) float64 { return float64(n) / float64(total) }

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s: %.3f, want %.3f ± %.3f", what, got, want, tol)
	}
}

func reset(us ...*upstream) {
	for _, u := range us {
		u.hits.Store(0)
		u.status.Store(0)
		u.delay.Store(0)
	}
}

func TestGateway(t *testing.T) {
	a, b, c := newUpstream(t, "a"), newUpstream(t, "b"), newUpstream(t, "c")
	good, bad := newUpstream(t, "good"), newUpstream(t, "bad")
	dead, _ := net.Listen("tcp", "127.0.0.1:0") // a closed port: connection refused
	deadAddr := dead.Addr().String()
	dead.Close()

	port := testhost.FreePort(t)
	h := testhost.Start(t, testhost.Options{Config: fmt.Sprintf(`plugins:
  gateway:
    listen: 127.0.0.1:%d
    management:
      password: %s
    services:
      test:
        upstreams:
          - {id: a, hostname: xxx1, address: %s, weight: 10}
          - {id: b, hostname: xxx2, address: %s, weight: 10}
          - {id: c, hostname: xxx3, address: %s, weight: 30}
      flaky:
        upstreams:
          - {id: bad, address: %s}
          - {id: good, address: %s}
      retry:
        upstreams:
          - {id: dead, address: %s}
          - {id: good, address: %s}
`, port, md5hex(md5hex(password)), a.addr(), b.addr(), c.addr(), bad.addr(), good.addr(), deadAddr, good.addr())})
	g := &gw{t: t, h: h, data: fmt.Sprintf("http://127.0.0.1:%d", port), auth: md5hex(password),
		c: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}

	so1 := h.Compile(t, "plugins/gateway")
	h.LoadAPI(t, "gateway.v1", so1)

	t.Run("seed endpoints", func(t *testing.T) {
		g.t = t
		data := g.ok("GET", "/management/config?service_name=test", "")
		var cfg struct {
			Default bool `json:"default"`
			Config  struct {
				ReverseProxy struct {
					Trim  bool `json:"trim_routing_key_prefix"`
					Retry int  `json:"retry_count"`
				} `json:"reverse_proxy"`
				LoadBalance struct{ Strategy string }    `json:"load_balance"`
				RateLimiter struct{ Rate, Peak float64 } `json:"rate_limiter"`
				Breaker     struct {
					MaxFailures int    `json:"max_failures"`
					OpenTimeout string `json:"open_timeout"`
				} `json:"breaker"`
			} `json:"config"`
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatal(err)
		}
		if !cfg.Default || !cfg.Config.ReverseProxy.Trim || cfg.Config.ReverseProxy.Retry != 1 ||
			cfg.Config.LoadBalance.Strategy != "round-robin" || cfg.Config.Breaker.MaxFailures != 5 || cfg.Config.Breaker.OpenTimeout != "30s" {
			t.Fatalf("default config: %s", data)
		}
		g.ok("PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"round-robin"}}`)
		g.ok("PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":5,"peak":10}}`)
		g.ok("PUT", "/management/config/breaker", `{"service_name":"test","config":{"max_failures":5,"half_open_max_requests":1,"open_timeout":"30s","interval":"30s"}}`)
		data = g.ok("GET", "/management/config?service_name=test", "")
		json.Unmarshal(data, &cfg)
		if cfg.Default || cfg.Config.RateLimiter.Rate != 5 || cfg.Config.RateLimiter.Peak != 10 {
			t.Fatalf("config after PUTs: %s", data)
		}
		g.ok("PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":0,"peak":0}}`)

		g.ok("PUT", "/management/program/variable", `{"key":"your_key","value":"your_value"}`)
		if data := g.ok("GET", "/management/program/variable", ""); !strings.Contains(string(data), `"your_key":"your_value"`) {
			t.Fatalf("variables: %s", data)
		}
		g.ok("DELETE", "/management/program/variable?key=your_key", "")
		if data := g.ok("GET", "/management/program/variable", ""); strings.Contains(string(data), "your_key") {
			t.Fatalf("variable not deleted: %s", data)
		}

		src := base64.StdEncoding.EncodeToString([]byte(`request.method != "TRACE"`))
		g.ok("PUT", "/management/program/info", `{"expr":"`+src+`","name":"test-program","service_name":"test"}`)
		data = g.ok("GET", "/management/program/info?service_name=test", "")
		if string(data) != `{"test":[{"expr":"`+src+`","name":"test-program","service_name":"test"}]}` {
			t.Fatalf("programs: %s", data)
		}
		g.ok("DELETE", "/management/program/info?service_name=test&name=test-program", "")
		if data := g.ok("GET", "/management/program/info", ""); strings.Contains(string(data), "test-program") {
			t.Fatalf("program not deleted: %s", data)
		}

		if data := g.ok("GET", "/management/upstream/service/names", ""); string(data) != `["flaky","retry","test"]` {
			t.Fatalf("names: %s", data)
		}
		data = g.ok("GET", "/management/upstream/service/state?service_name=test", "")
		var st struct {
			Upstreams int `json:"upstreams"`
			States    []struct {
				Hostname     string `json:"hostname"`
				InstanceID   string `json:"instance_id"`
				Healthy      bool   `json:"healthy"`
				Weight       int    `json:"weight"`
				Load         int    `json:"load"`
				BreakerState string `json:"breaker_state"`
			} `json:"upstream_states"`
		}
		json.Unmarshal(data, &st)
		if st.Upstreams != 3 || len(st.States) != 3 || st.States[2].Hostname != "xxx3" || st.States[2].Weight != 30 ||
			!st.States[0].Healthy || st.States[0].BreakerState != "closed" || st.States[1].InstanceID != "b" {
			t.Fatalf("state: %s", data)
		}
	})

	t.Run("refusals", func(t *testing.T) {
		g.t = t
		for _, tc := range []struct {
			method, path, body string
			status             int
		}{
			{"PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"fastest"}}`, 400},
			{"PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"random"},"extra":1}`, 400},
			{"PUT", "/management/config/load_balance", `{"service_name":"test"`, 400},
			{"PUT", "/management/config/load_balance", `{"service_name":"nope","config":{"strategy":"random"}}`, 404},
			{"PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":"fast"}}`, 400},
			{"PUT", "/management/config/breaker", `{"service_name":"test","config":{"open_timeout":"later"}}`, 400},
			{"PUT", "/management/config/reverse_proxy", `{"service_name":"test","config":{"response_header_timeout":"soon"}}`, 400},
			{"PUT", "/management/config/reverse_proxy", `{"service_name":"test","config":{"response_header_timeout":"-1s"}}`, 400},
			{"PUT", "/management/program/variable", `{"value":1}`, 400},
			{"PUT", "/management/program/info", `{"expr":"!!!","name":"p","service_name":"test"}`, 400},
			{"GET", "/management/upstream/service/state?service_name=nope", "", 404},
			{"GET", "/management/config?service_name=nope", "", 404},
			{"DELETE", "/management/program/variable?key=never-set", "", 404},
		} {
			st, e := g.call(tc.method, tc.path, tc.body)
			if st != tc.status || e.Code == 0 || e.Message == "" {
				t.Errorf("%s %s %s: %d %+v, want %d", tc.method, tc.path, tc.body, st, e, tc.status)
			}
		}
		bad := base64.StdEncoding.EncodeToString([]byte("true\nrequest.method == "))
		st, e := g.call("PUT", "/management/program/info", `{"expr":"`+bad+`","name":"p","service_name":"test"}`)
		if st != 400 || !strings.Contains(e.Message, "line 2, column") {
			t.Errorf("syntax error: %d %+v", st, e)
		}
		saved := g.auth
		for _, auth := range []string{"", md5hex("wrong"), md5hex(md5hex(password))} {
			g.auth = auth
			if st, e := g.call("GET", "/management/config", ""); st != 401 || e.Code == 0 {
				t.Errorf("Authorization %q: %d %+v", auth, st, e)
			}
		}
		g.auth = saved
	})

	t.Run("routing", func(t *testing.T) {
		g.t = t
		st, body, _ := g.get("/test/some/path?q=1")
		if st != 200 || !strings.HasSuffix(body, " /some/path?q=1 ") {
			t.Fatalf("proxied: %d %q", st, body)
		}
		var r *http.Request
		for _, u := range []*upstream{a, b, c} {
			if strings.HasPrefix(body, u.id+" ") {
				r = u.lastReq()
			}
		}
		if r == nil || r.Header.Get("X-Forwarded-For") != "127.0.0.1" || r.Header.Get("X-Forwarded-Proto") != "http" || r.Header.Get("X-Forwarded-Host") == "" {
			t.Fatalf("forwarded headers: %v", r)
		}
		if st, body, _ := g.get("/nope/x"); st != 404 || !strings.Contains(body, `"code":404`) {
			t.Fatalf("unknown service: %d %s", st, body)
		}
		g.ok("PUT", "/management/config/reverse_proxy", `{"service_name":"test","config":{"trim_routing_key_prefix":false,"retry_count":1}}`)
		if _, body, _ := g.get("/test/p"); !strings.HasSuffix(body, " /test/p ") {
			t.Fatalf("untrimmed: %q", body)
		}
		g.ok("PUT", "/management/config/reverse_proxy", `{"service_name":"test","config":{"trim_routing_key_prefix":true,"retry_count":1}}`)
		// a service whose only instance left answers 503
		g.ok("PUT", "/gateway/v1/registry/instance"[len("/gateway/v1"):], `{"service_name":"lonely","id":"l1","address":"`+a.addr()+`","ttl":"30s"}`)
		if st, body, _ := g.get("/lonely/"); st != 200 || !strings.HasPrefix(body, "a ") {
			t.Fatalf("registered instance: %d %q", st, body)
		}
		g.ok("PUT", "/registry/heartbeat", `{"service_name":"lonely","id":"l1"}`)
		g.ok("PUT", "/management/config/load_balance", `{"service_name":"lonely","config":{"strategy":"random"}}`)
		g.ok("DELETE", "/registry/instance?service_name=lonely&id=l1", "")
		if st, _, _ := g.get("/lonely/"); st != 503 {
			t.Fatalf("no instance: %d", st)
		}
	})

	t.Run("strategies", func(t *testing.T) {
		g.t = t
		run := func(strategy string, n int, hdr func(i int) []string) (float64, float64, float64) {
			g.ok("PUT", "/management/config/load_balance", `{"service_name":"test","config":`+strategy+`}`)
			reset(a, b, c)
			for i := 0; i < n; i++ {
				var hv []string
				if hdr != nil {
					hv = hdr(i)
				}
				if st, body, _ := g.get("/test/", hv...); st != 200 {
					t.Fatalf("%s: %d %s", strategy, st, body)
				}
			}
			tot := a.hits.Load() + b.hits.Load() + c.hits.Load()
			return share(a.hits.Load(), tot), share(b.hits.Load(), tot), share(c.hits.Load(), tot)
		}
		sa, sb, sc := run(`{"strategy":"round_robin"}`, 300, nil)
		near(t, "round-robin a", sa, 1.0/3, 0.01)
		near(t, "round-robin c", sc, 1.0/3, 0.01)
		sa, sb, sc = run(`{"strategy":"weighted-round-robin"}`, 500, nil)
		near(t, "weighted-round-robin a", sa, 0.2, 0.01)
		near(t, "weighted-round-robin b", sb, 0.2, 0.01)
		near(t, "weighted-round-robin c", sc, 0.6, 0.01)
		sa, sb, sc = run(`{"strategy":"random"}`, 900, nil)
		near(t, "random a", sa, 1.0/3, 0.08)
		near(t, "random c", sc, 1.0/3, 0.08)
		sa, sb, sc = run(`{"strategy":"weighted-random"}`, 1000, nil)
		near(t, "weighted-random a+b", sa+sb, 0.4, 0.07)
		near(t, "weighted-random c", sc, 0.6, 0.07)
		// hash on the client IP: every request from 127.0.0.1 lands on one instance
		sa, sb, sc = run(`{"strategy":"hash"}`, 60, nil)
		if math.Max(sa, math.Max(sb, sc)) != 1 {
			t.Errorf("hash on client IP spread one client: %.2f %.2f %.2f", sa, sb, sc)
		}
		// hash on a header: keys spread by weight, each key sticks
		sa, sb, sc = run(`{"strategy":"hash","hash_header":"X-User"}`, 600, func(i int) []string { return []string{"X-User", fmt.Sprint("user-", i%200)} })
		near(t, "hash c share", sc, 0.6, 0.15)
		if sa == 0 || sb == 0 {
			t.Errorf("hash on header: a %.2f b %.2f", sa, sb)
		}
		for i := 0; i < 5; i++ {
			_, first, _ := g.get("/test/", "X-User", fmt.Sprint("sticky-", i))
			for k := 0; k < 5; k++ {
				if _, again, _ := g.get("/test/", "X-User", fmt.Sprint("sticky-", i)); again[:2] != first[:2] {
					t.Fatalf("key sticky-%d moved: %q then %q", i, first, again)
				}
			}
		}
		// less-load: a slow instance has requests piling up and gets fewer
		g.ok("PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"less-load"}}`)
		reset(a, b, c)
		c.delay.Store(int64(40 * time.Millisecond))
		var wg sync.WaitGroup
		for w := 0; w < 6; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 40; i++ {
					resp, err := g.c.Get(g.data + "/test/")
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}()
		}
		wg.Wait()
		c.delay.Store(0)
		tot := a.hits.Load() + b.hits.Load() + c.hits.Load()
		if tot != 240 || share(c.hits.Load(), tot) > 0.15 {
			t.Errorf("less-load: a %d b %d slow c %d", a.hits.Load(), b.hits.Load(), c.hits.Load())
		}
		g.ok("PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"round-robin"}}`)
	})

	t.Run("rate limiter", func(t *testing.T) {
		g.t = t
		g.ok("PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":20,"peak":10}}`)
		start := time.Now()
		admitted, limited := 0, 0
		retryAfter := ""
		for time.Since(start) < 1500*time.Millisecond {
			st, _, hd := g.get("/test/")
			switch st {
			case 200:
				admitted++
			case 429:
				limited++
				retryAfter = hd.Get("Retry-After")
			default:
				t.Fatalf("status %d", st)
			}
		}
		el := time.Since(start).Seconds()
		want := 20*el + 10
		if math.Abs(float64(admitted)-want) > 3+0.1*want || limited == 0 || retryAfter != "1" {
			t.Errorf("limiter admitted %d in %.2fs (want %.0f), limited %d, Retry-After %q", admitted, el, want, limited, retryAfter)
		}
		// off again, at once
		g.ok("PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":0,"peak":0}}`)
		for i := 0; i < 50; i++ {
			if st, _, _ := g.get("/test/"); st != 200 {
				t.Fatalf("limiter off: %d", st)
			}
		}
	})

	t.Run("breaker", func(t *testing.T) {
		g.t = t
		reset(good, bad)
		g.ok("PUT", "/management/config/reverse_proxy", `{"service_name":"flaky","config":{"trim_routing_key_prefix":true,"retry_count":0}}`)
		g.ok("PUT", "/management/config/breaker", `{"service_name":"flaky","config":{"max_failures":3,"half_open_max_requests":1,"open_timeout":"2s","interval":"30s"}}`)
		bad.status.Store(500)
		fails := 0
		for i := 0; i < 40; i++ {
			if st, _, _ := g.get("/flaky/"); st == 500 {
				fails++
			}
		}
		if fails != 3 || bad.hits.Load() != 3 || good.hits.Load() != 37 {
			t.Fatalf("breaker: %d failures reached clients, bad hit %d, good hit %d", fails, bad.hits.Load(), good.hits.Load())
		}
		data := g.ok("GET", "/management/upstream/service/state?service_name=flaky", "")
		if !strings.Contains(string(data), `"instance_id":"bad","address":"`+bad.addr()+`","healthy":true,"weight":1,"load":0,"breaker_state":"open"`) {
			t.Fatalf("state: %s", data)
		}
		time.Sleep(2200 * time.Millisecond)
		data = g.ok("GET", "/management/upstream/service/state?service_name=flaky", "")
		if !strings.Contains(string(data), `"breaker_state":"half-open"`) {
			t.Fatalf("after open_timeout: %s", data)
		}
		bad.status.Store(0)
		for i := 0; i < 4; i++ {
			g.get("/flaky/")
		}
		data = g.ok("GET", "/management/upstream/service/state?service_name=flaky", "")
		if strings.Contains(string(data), `"breaker_state":"open"`) || strings.Contains(string(data), "half-open") || bad.hits.Load() < 4 {
			t.Fatalf("after recovery: %s (bad hits %d)", data, bad.hits.Load())
		}
	})

	t.Run("response header timeout", func(t *testing.T) {
		g.t = t
		// an upstream that takes requests and never answers
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		g.ok("PUT", "/registry/instance", `{"service_name":"mute","id":"m1","address":"`+ln.Addr().String()+`","ttl":"30s"}`)
		g.ok("PUT", "/management/config/reverse_proxy", `{"service_name":"mute","config":{"trim_routing_key_prefix":true,"retry_count":0,"response_header_timeout":"300ms"}}`)
		if data := g.ok("GET", "/management/config?service_name=mute", ""); !strings.Contains(string(data), `"response_header_timeout":"300ms"`) {
			t.Fatalf("config: %s", data)
		}
		start := time.Now()
		st, body, _ := g.get("/mute/x")
		if st != 504 || !strings.Contains(body, `did not answer within 300ms`) {
			t.Fatalf("mute upstream: %d %s", st, body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("504 after %v, want about 300ms", d)
		}
		g.ok("DELETE", "/registry/instance?service_name=mute&id=m1", "")
	})

	t.Run("retries", func(t *testing.T) {
		g.t = t
		reset(good)
		g.ok("PUT", "/management/config/breaker", `{"service_name":"retry","config":{"max_failures":0}}`)
		for i := 0; i < 20; i++ {
			if st, body, _ := g.get("/retry/x"); st != 200 || !strings.HasPrefix(body, "good ") {
				t.Fatalf("retry: %d %q", st, body)
			}
		}
		// a POST with a small body is retried after a refused connection too
		resp, err := g.c.Post(g.data+"/retry/p", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "good /p payload" {
			t.Fatalf("POST retry: %d %q", resp.StatusCode, body)
		}
		if good.hits.Load() != 21 {
			t.Fatalf("good hits %d", good.hits.Load())
		}
		// without retries the dead instance shows through as 502
		g.ok("PUT", "/management/config/reverse_proxy", `{"service_name":"retry","config":{"trim_routing_key_prefix":true,"retry_count":0}}`)
		codes := map[int]int{}
		for i := 0; i < 10; i++ {
			st, _, _ := g.get("/retry/x")
			codes[st]++
		}
		if codes[502] != 5 || codes[200] != 5 {
			t.Fatalf("no retries: %v", codes)
		}
	})

	t.Run("programs", func(t *testing.T) {
		g.t = t
		g.ok("PUT", "/management/program/variable", `{"key":"blocked","value":"evil"}`)
		src := "// refuse blocked users and non-GET methods\n" +
			"terminate_if(get_header(\"X-User\") == global.blocked, \"user is blocked\")\n" +
			"request.method == \"GET\"\n" +
			"set_header(\"X-Program\", upstream.service)\n" +
			"set_global(\"last_path\", request.path)"
		g.ok("PUT", "/management/program/info", `{"expr":"`+base64.StdEncoding.EncodeToString([]byte(src))+`","name":"guard","service_name":"test"}`)
		reset(a, b, c)
		if st, body, _ := g.get("/test/ok", "X-User", "alice"); st != 200 {
			t.Fatalf("accepted request: %d %s", st, body)
		}
		var seen *http.Request
		for _, u := range []*upstream{a, b, c} {
			if u.hits.Load() == 1 {
				seen = u.lastReq()
			}
		}
		if seen == nil || seen.Header.Get("X-Program") != "test" {
			t.Fatalf("set_header did not reach the upstream")
		}
		if st, body, _ := g.get("/test/x", "X-User", "evil"); st != 400 || !strings.Contains(body, "user is blocked") {
			t.Fatalf("blocked user: %d %s", st, body)
		}
		resp, _ := g.c.Post(g.data+"/test/x", "text/plain", strings.NewReader("x"))
		rb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(rb), "line 3") {
			t.Fatalf("POST: %d %s", resp.StatusCode, rb)
		}
		if a.hits.Load()+b.hits.Load()+c.hits.Load() != 1 {
			t.Fatalf("rejected requests reached upstreams")
		}
		// set_global is visible through the API
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(string(g.ok("GET", "/management/program/variable", "")), `"last_path":"/test/ok"`) {
			if time.Now().After(deadline) {
				t.Fatalf("set_global not visible: %s", g.ok("GET", "/management/program/variable", ""))
			}
			time.Sleep(100 * time.Millisecond)
		}
		g.ok("DELETE", "/management/program/info?service_name=test&name=guard", "")
		if st, _, _ := g.get("/test/x", "X-User", "evil"); st != 200 {
			t.Fatalf("after delete: %d", st)
		}
	})

	t.Run("slp filter", func(t *testing.T) {
		g.t = t
		so := h.Compile(t, filepath.Join("plugins", "gateway", "e2e", "testdata", "gwfilter"))
		h.LoadSLP(t, "gwfilter", so)
		g.ok("PUT", "/management/config/slp", `{"service_name":"test","config":{"name":"gwfilter"}}`)
		reset(a, b, c)
		if st, _, _ := g.get("/test/f"); st != 200 {
			t.Fatalf("filtered: %d", st)
		}
		for _, u := range []*upstream{a, b, c} {
			if u.hits.Load() == 1 && u.lastReq().Header.Get("X-Filtered") != "gwfilter" {
				t.Fatalf("filter did not run")
			}
		}
		if st, body, _ := g.get("/test/f", "X-Deny", "1"); st != 403 || !strings.Contains(body, "denied by gwfilter") {
			t.Fatalf("filter refusal: %d %s", st, body)
		}
		g.ok("PUT", "/management/config/slp", `{"service_name":"test","config":{"name":""}}`)
		if st, _, _ := g.get("/test/f", "X-Deny", "1"); st != 200 {
			t.Fatalf("filter off: %d", st)
		}
	})

	t.Run("websocket", func(t *testing.T) {
		g.t = t
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(g.data, "http")+"/test/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
		for i := 0; i < 3; i++ {
			if err := conn.Write(ctx, websocket.MessageText, []byte(fmt.Sprint("ping", i))); err != nil {
				t.Fatal(err)
			}
			_, msg, err := conn.Read(ctx)
			if err != nil || !strings.HasSuffix(string(msg), fmt.Sprint(":ping", i)) {
				t.Fatalf("echo: %q %v", msg, err)
			}
		}
		conn.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("metrics", func(t *testing.T) {
		g.t = t
		// the management password guards the metrics too: 401 without it,
		// 200 with md5(password) bare or as a bearer token (Prometheus)
		scrape := func(auth string) (int, string) {
			req, _ := http.NewRequest("GET", h.URL+"/gateway/v1/metrics", nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := g.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		for _, auth := range []string{"", md5hex("wrong"), "Bearer " + md5hex("wrong")} {
			if st, body := scrape(auth); st != http.StatusUnauthorized || strings.Contains(body, "gateway_requests_total") {
				t.Fatalf("metrics with Authorization %q: %d %.80s", auth, st, body)
			}
		}
		if st, _ := scrape("Bearer " + md5hex(password)); st != http.StatusOK {
			t.Fatalf("metrics with the bearer password: %d", st)
		}
		st, body := scrape(md5hex(password))
		if st != http.StatusOK {
			t.Fatalf("metrics with the password: %d", st)
		}
		for _, want := range []string{`gateway_requests_total{code="200",service="test"}`, `gateway_requests_total{code="429",service="test"}`,
			`gateway_request_duration_seconds_bucket{service="test"`, `gateway_upstream_breaker_state{instance="bad",service="flaky"} 0`,
			`gateway_rate_limited_total{service="test"}`, `gateway_program_rejections_total{service="test"} 2`} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %s", want)
			}
		}
	})

	t.Run("swap under load", func(t *testing.T) {
		g.t = t
		so2 := h.Compile(t, "plugins/gateway")
		if so2 == so1 {
			t.Fatal("pcompile reused the file name")
		}
		var okN, errN atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
				defer client.CloseIdleConnections()
				for i := 0; i < 5000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					resp, err := client.Get(g.data + "/test/load")
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == 200 {
							okN.Add(1)
							continue
						}
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
					errN.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}()
		}
		time.Sleep(500 * time.Millisecond)
		h.LoadAPI(t, "gateway.v1", so2)
		time.Sleep(1500 * time.Millisecond)
		close(stop)
		wg.Wait()
		if errN.Load() != 0 || okN.Load() < 100 {
			t.Fatalf("swap under load: %d ok, %d failed (first: %v)", okN.Load(), errN.Load(), firstErr.Load())
		}
		t.Logf("swap under load: %d requests, none failed", okN.Load())
		// the new version serves with the state the old one stored
		data := g.ok("GET", "/management/config?service_name=flaky", "")
		if !strings.Contains(string(data), `"open_timeout":"2s"`) {
			t.Fatalf("config lost in swap: %s", data)
		}
	})

	t.Run("restart keeps state", func(t *testing.T) {
		g.t = t
		g.ok("PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"weighted-random"}}`)
		h.Restart(t)
		g.c.CloseIdleConnections()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := g.c.Get(g.data + "/test/")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway not back after restart: %v %v", resp, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if data := g.ok("GET", "/management/config?service_name=test", ""); !strings.Contains(string(data), `"strategy":"weighted-random"`) {
			t.Fatalf("config after restart: %s", data)
		}
		if data := g.ok("GET", "/management/program/variable", ""); !strings.Contains(string(data), `"blocked":"evil"`) {
			t.Fatalf("variables after restart: %s", data)
		}
	})
}
