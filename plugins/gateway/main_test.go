package main

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/plugd/plugd/sdk"
	"github.com/plugd/plugd/sdk/sdktest"
)

type backend struct {
	srv   *httptest.Server
	id    string
	hits  atomic.Int64
	fail  atomic.Bool
	paths sync.Map
}

func newBackend(t *testing.T, id string) *backend {
	b := &backend{id: id}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.paths.Store(r.URL.Path, r.Header.Get("X-Forwarded-For"))
		if b.fail.Load() {
			http.Error(w, "boom", http.StatusServiceUnavailable)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Backend", id)
		fmt.Fprintf(w, "%s %s %s", id, r.URL.Path, body)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) addr() string { return strings.TrimPrefix(b.srv.URL, "http://") }

func md5hex(s string) string { h := md5.Sum([]byte(s)); return hex.EncodeToString(h[:]) }

type fixture struct {
	t    *testing.T
	host *sdktest.Host
	g    *gateway
	mgmt *httptest.Server
	data string
	auth string
}

func start(t *testing.T, host *sdktest.Host) *fixture {
	t.Helper()
	api, err := newAPI(host)
	if err != nil {
		t.Fatal(err)
	}
	g := api.(*gateway)
	if err := g.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, host: host, g: g, mgmt: httptest.NewServer(g), data: "http://" + g.ln.Addr().String(), auth: md5hex("secret")}
	t.Cleanup(func() {
		f.mgmt.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = g.Stop(ctx)
	})
	return f
}

func hostWith(t *testing.T, yaml string) *sdktest.Host {
	h := sdktest.NewHost(t, "gateway.v1")
	h.ConfigYAML = "listen: 127.0.0.1:0\nmanagement:\n  password: " + md5hex(md5hex("secret")) + "\n" + yaml
	return h
}

type env struct {
	Message string          `json:"message"`
	Code    int             `json:"code"`
	Data    json.RawMessage `json:"data"`
}

func (f *fixture) call(method, path, body string) (int, env) {
	f.t.Helper()
	req, _ := http.NewRequest(method, f.mgmt.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", f.auth)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var e env
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &e); err != nil {
		f.t.Fatalf("%s %s: not the envelope: %s", method, path, raw)
	}
	return resp.StatusCode, e
}

func (f *fixture) mustOK(method, path, body string) env {
	f.t.Helper()
	st, e := f.call(method, path, body)
	if st != 200 || e.Code != 0 || e.Message != "success" {
		f.t.Fatalf("%s %s: %d %+v", method, path, st, e)
	}
	return e
}

func (f *fixture) get(path string, hdr ...string) (int, string, http.Header) {
	f.t.Helper()
	req, _ := http.NewRequest("GET", f.data+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func TestManagementSeedEndpoints(t *testing.T) {
	b1, b2 := newBackend(t, "a"), newBackend(t, "b")
	f := start(t, hostWith(t, fmt.Sprintf(`services:
  test:
    upstreams:
      - {id: a, hostname: xxx1, address: %s, weight: 10}
      - {id: b, hostname: xxx2, address: %s, weight: 30}
`, b1.addr(), b2.addr())))

	e := f.mustOK("GET", "/management/config?service_name=test", "")
	var cfg struct {
		Default bool `json:"default"`
		Config  struct {
			ReverseProxy map[string]any            `json:"reverse_proxy"`
			LoadBalance  struct{ Strategy string } `json:"load_balance"`
			Breaker      map[string]any            `json:"breaker"`
		} `json:"config"`
	}
	json.Unmarshal(e.Data, &cfg)
	if !cfg.Default || cfg.Config.LoadBalance.Strategy != "round-robin" || cfg.Config.ReverseProxy["trim_routing_key_prefix"] != true || cfg.Config.Breaker["open_timeout"] != "30s" {
		t.Fatalf("config = %s", e.Data)
	}
	f.mustOK("PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"weighted_round_robin"}}`)
	f.mustOK("PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":5,"peak":10}}`)
	f.mustOK("PUT", "/management/config/breaker", `{"service_name":"test","config":{"max_failures":5,"half_open_max_requests":1,"open_timeout":"30s","interval":"30s"}}`)
	e = f.mustOK("GET", "/management/config?service_name=test", "")
	json.Unmarshal(e.Data, &cfg)
	if cfg.Default || cfg.Config.LoadBalance.Strategy != "weighted-round-robin" {
		t.Fatalf("after PUT: %s", e.Data)
	}

	f.mustOK("PUT", "/management/program/variable", `{"key":"your_key","value":"your_value"}`)
	e = f.mustOK("GET", "/management/program/variable", "")
	if !strings.Contains(string(e.Data), `"your_key":"your_value"`) {
		t.Fatalf("variables = %s", e.Data)
	}
	f.mustOK("DELETE", "/management/program/variable?key=your_key", "")
	if st, _ := f.call("DELETE", "/management/program/variable?key=your_key", ""); st != 404 {
		t.Fatalf("second delete: %d", st)
	}

	src := base64.StdEncoding.EncodeToString([]byte(`request.method == "GET"`))
	f.mustOK("PUT", "/management/program/info", `{"expr":"`+src+`","name":"test-program","service_name":"test"}`)
	e = f.mustOK("GET", "/management/program/info?service_name=test", "")
	if !strings.Contains(string(e.Data), `"test":[{"expr":"`+src+`","name":"test-program","service_name":"test"}]`) {
		t.Fatalf("programs = %s", e.Data)
	}
	f.mustOK("DELETE", "/management/program/info?service_name=test&name=test-program", "")

	e = f.mustOK("GET", "/management/upstream/service/names", "")
	if string(e.Data) != `["test"]` {
		t.Fatalf("names = %s", e.Data)
	}
	e = f.mustOK("GET", "/management/upstream/service/state?service_name=test", "")
	var st struct {
		Upstreams int `json:"upstreams"`
		States    []struct {
			Hostname, InstanceID, BreakerState string
			Healthy                            bool
			Weight                             int
		} `json:"upstream_states"`
	}
	json.Unmarshal(e.Data, &st)
	if st.Upstreams != 2 || len(st.States) != 2 || st.States[1].Weight != 30 || !st.States[0].Healthy || !strings.Contains(string(e.Data), `"breaker_state":"closed"`) || !strings.Contains(string(e.Data), `"instance_id":"a"`) {
		t.Fatalf("state = %s", e.Data)
	}

	// errors
	for _, c := range []struct {
		method, path, body string
		status             int
	}{
		{"GET", "/management/upstream/service/state?service_name=nope", "", 404},
		{"GET", "/management/config?service_name=nope", "", 404},
		{"PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"fastest"}}`, 400},
		{"PUT", "/management/config/load_balance", `{"service_name":"test","config":{"strategy":"random"},"x":1}`, 400},
		{"PUT", "/management/config/load_balance", `{"service_name":"nope","config":{"strategy":"random"}}`, 404},
		{"PUT", "/management/config/rate_limiter", `{"service_name":"test","config":{"rate":-1}}`, 400},
		{"PUT", "/management/config/breaker", `{"service_name":"test","config":{"open_timeout":"soon"}}`, 400},
		{"PUT", "/management/config/breaker", `not json`, 400},
		{"PUT", "/management/program/info", `{"expr":"` + base64.StdEncoding.EncodeToString([]byte("true\n1 +")) + `","name":"p","service_name":"test"}`, 400},
	} {
		status, e := f.call(c.method, c.path, c.body)
		if status != c.status || e.Code == 0 || e.Message == "" {
			t.Errorf("%s %s %s: %d %+v, want %d", c.method, c.path, c.body, status, e, c.status)
		}
	}
	_, e = f.call("PUT", "/management/program/info", `{"expr":"`+base64.StdEncoding.EncodeToString([]byte("true\n1 +"))+`","name":"p","service_name":"test"}`)
	if !strings.Contains(e.Message, "line 2") {
		t.Errorf("compile error does not name the line: %s", e.Message)
	}

	// auth
	f.auth = md5hex("wrong")
	if status, e := f.call("GET", "/management/config", ""); status != 401 || e.Code == 0 {
		t.Fatalf("wrong password: %d %+v", status, e)
	}
	f.auth = ""
	if status, _ := f.call("GET", "/management/config", ""); status != 401 {
		t.Fatalf("no password: %d", status)
	}
}

func TestDataPlane(t *testing.T) {
	b1, b2 := newBackend(t, "a"), newBackend(t, "b")
	f := start(t, hostWith(t, fmt.Sprintf(`services:
  svc:
    upstreams:
      - {id: a, address: %s, weight: 1}
      - {id: b, address: %s, weight: 3}
`, b1.addr(), b2.addr())))

	st, body, _ := f.get("/svc/hello/world?x=1")
	if st != 200 || !strings.HasSuffix(body, " /hello/world ") {
		t.Fatalf("proxy: %d %q", st, body)
	}
	if st, _, _ := f.get("/nope/x"); st != 404 {
		t.Fatalf("unknown service: %d", st)
	}
	// round robin: equal split
	b1.hits.Store(0)
	b2.hits.Store(0)
	for i := 0; i < 100; i++ {
		f.get("/svc/")
	}
	if b1.hits.Load() != 50 || b2.hits.Load() != 50 {
		t.Fatalf("round robin %d/%d", b1.hits.Load(), b2.hits.Load())
	}
	// weighted round robin: 1:3, applied live
	f.mustOK("PUT", "/management/config/load_balance", `{"service_name":"svc","config":{"strategy":"weighted-round-robin"}}`)
	b1.hits.Store(0)
	b2.hits.Store(0)
	for i := 0; i < 100; i++ {
		f.get("/svc/")
	}
	if b1.hits.Load() != 25 || b2.hits.Load() != 75 {
		t.Fatalf("weighted round robin %d/%d", b1.hits.Load(), b2.hits.Load())
	}
	// no trim
	f.mustOK("PUT", "/management/config/reverse_proxy", `{"service_name":"svc","config":{"trim_routing_key_prefix":false,"retry_count":1}}`)
	if _, body, _ := f.get("/svc/p"); !strings.HasSuffix(body, " /svc/p ") {
		t.Fatalf("untrimmed path: %q", body)
	}
	// retry: one backend fails with 503, GETs land on the other
	b1.fail.Store(true)
	for i := 0; i < 20; i++ {
		if st, body, _ := f.get("/svc/r"); st != 200 || !strings.HasPrefix(body, "b ") {
			t.Fatalf("retry: %d %q", st, body)
		}
	}
	// breaker opened after 5 consecutive failures: a is now skipped
	_, e := f.call("GET", "/management/upstream/service/state?service_name=svc", "")
	if !strings.Contains(string(e.Data), `"instance_id":"a","address":"`+b1.addr()+`","healthy":true,"weight":1,"load":0,"breaker_state":"open"`) {
		t.Fatalf("state after failures: %s", e.Data)
	}
	b1.fail.Store(false)
	// limiter: rate 1/s, peak 3 → 3 admitted at once, then 429
	f.mustOK("PUT", "/management/config/rate_limiter", `{"service_name":"svc","config":{"rate":1,"peak":3}}`)
	codes := map[int]int{}
	var retryAfter string
	for i := 0; i < 6; i++ {
		st, _, h := f.get("/svc/")
		codes[st]++
		if st == 429 {
			retryAfter = h.Get("Retry-After")
		}
	}
	if codes[200] != 3 || codes[429] != 3 || retryAfter != "1" {
		t.Fatalf("limiter: %v retry-after %q", codes, retryAfter)
	}
	f.mustOK("PUT", "/management/config/rate_limiter", `{"service_name":"svc","config":{"rate":0,"peak":0}}`)
	if st, _, _ := f.get("/svc/"); st != 200 {
		t.Fatalf("limiter off: %d", st)
	}
	// programs
	src := base64.StdEncoding.EncodeToString([]byte("terminate_if(get_header(\"X-Bad\") != \"\", \"bad header\")\nrequest.method == \"GET\""))
	f.mustOK("PUT", "/management/program/info", `{"expr":"`+src+`","name":"guard","service_name":"svc"}`)
	if st, body, _ := f.get("/svc/", "X-Bad", "1"); st != 400 || !strings.Contains(body, "bad header") {
		t.Fatalf("program reject: %d %q", st, body)
	}
	if st, _, _ := f.get("/svc/"); st != 200 {
		t.Fatalf("program accept: %d", st)
	}
	resp, _ := http.Post(f.data+"/svc/", "text/plain", strings.NewReader("x"))
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("program reject POST: %d", resp.StatusCode)
	}
	// metrics
	mresp, _ := http.Get(f.mgmt.URL + "/metrics")
	mresp.Body.Close()
	if mresp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("metrics without the password: %d", mresp.StatusCode)
	}
	mreq, _ := http.NewRequest("GET", f.mgmt.URL+"/metrics", nil)
	mreq.Header.Set("Authorization", f.auth)
	mresp, _ = http.DefaultClient.Do(mreq)
	mb, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`gateway_requests_total{code="200",service="svc"}`, `gateway_upstream_breaker_state{instance="a",service="svc"}`,
		`gateway_rate_limited_total{service="svc"} 3`, `gateway_request_duration_seconds_bucket`} {
		if !bytes.Contains(mb, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestRegistryAndPersistence(t *testing.T) {
	b1 := newBackend(t, "a")
	host := hostWith(t, "")
	f := start(t, host)
	f.mustOK("PUT", "/registry/instance", `{"service_name":"dyn","id":"i1","hostname":"h1","address":"`+b1.addr()+`","weight":2}`)
	if st, body, _ := f.get("/dyn/x"); st != 200 || !strings.HasPrefix(body, "a /x") {
		t.Fatalf("registered instance: %d %q", st, body)
	}
	// another plugin registering in the shared registry shows up too
	b2 := newBackend(t, "b")
	if err := host.Services().Register(sdk.Instance{ID: "d1", Service: "deployed", Address: b2.addr()}); err != nil {
		t.Fatal(err)
	}
	f.g.ctl.SyncRegistry()
	if st, body, _ := f.get("/deployed/"); st != 200 || !strings.HasPrefix(body, "b ") {
		t.Fatalf("deploy instance: %d %q", st, body)
	}
	f.mustOK("PUT", "/management/config/load_balance", `{"service_name":"dyn","config":{"strategy":"hash"}}`)
	f.mustOK("PUT", "/management/program/variable", `{"key":"k","value":{"n":1}}`)
	f.mustOK("DELETE", "/registry/instance?service_name=dyn&id=i1", "")
	if st, _, _ := f.get("/dyn/x"); st != 503 {
		t.Fatalf("after deregister: %d", st)
	}
	// a second instance of the plugin (a swap) sees the stored state
	f2 := start(t, host)
	e := f2.mustOK("GET", "/management/config?service_name=dyn", "")
	if !strings.Contains(string(e.Data), `"strategy":"hash"`) {
		t.Fatalf("config not persisted: %s", e.Data)
	}
	e = f2.mustOK("GET", "/management/program/variable", "")
	if string(e.Data) != `{"k":{"n":1}}` {
		t.Fatalf("variables not persisted: %s", e.Data)
	}
}

func TestHealthChecks(t *testing.T) {
	good := newBackend(t, "good")
	sick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "sick answered")
	}))
	defer sick.Close()
	f := start(t, hostWith(t, fmt.Sprintf(`services:
  hc:
    upstreams:
      - {id: good, address: %s}
      - {id: sick, address: %s}
    health_check: {path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2}
`, good.addr(), strings.TrimPrefix(sick.URL, "http://"))))
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, e := f.call("GET", "/management/upstream/service/state?service_name=hc", "")
		if strings.Contains(string(e.Data), `"instance_id":"sick","address":"`+strings.TrimPrefix(sick.URL, "http://")+`","healthy":false`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sick instance never marked unhealthy: %s", e.Data)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		if st, body, _ := f.get("/hc/x"); st != 200 || !strings.HasPrefix(body, "good ") {
			t.Fatalf("unhealthy instance selected: %d %q", st, body)
		}
	}
}

// The data plane's engine settings: every engine serves, with any number
// of loops; bad values are refused when the instance is made.
func TestEngineConfig(t *testing.T) {
	b := newBackend(t, "a")
	for _, cfg := range []string{"engine: event\nloops: 1\n", "engine: event\nloops: 3\n", "engine: fast\n", "engine: std\n"} {
		f := start(t, hostWith(t, cfg+"services:\n  svc:\n    upstreams:\n      - {id: a, address: "+b.addr()+"}\n"))
		for i := 0; i < 6; i++ { // over several connections, so every loop serves
			req, _ := http.NewRequest("GET", f.data+"/svc/x", nil)
			req.Close = true
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("%q: %v", cfg, err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%q: status %d", cfg, resp.StatusCode)
			}
		}
	}
	for cfg, want := range map[string]string{"loops: -1\n": "gateway.loops", "engine: turbo\n": "gateway.engine"} {
		if _, err := newAPI(hostWith(t, cfg)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %s", cfg, err, want)
		}
	}
}
