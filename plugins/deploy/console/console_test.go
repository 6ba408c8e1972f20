package console

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/deploy/driver"
	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk/sdktest"
)

func TestConfigAuthOff(t *testing.T) {
	h := sdktest.NewHost(t, "deploy.v1")
	h.ConfigYAML = "auth: off\nlimits: rlimit\n"
	cfg := DefaultConfig()
	if err := h.Config(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Auth || cfg.Validate() != nil {
		t.Fatalf("auth: off not understood: %+v", cfg)
	}
	h.ConfigYAML = "users: [{name: a, token: short}]\n"
	cfg = DefaultConfig()
	if err := h.Config(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Validate() == nil {
		t.Fatal("a short token was accepted")
	}
}

type tc struct {
	t   *testing.T
	h   *sdktest.Host
	c   *Console
	srv *httptest.Server
}

func newConsole(t *testing.T) *tc {
	h := sdktest.NewHost(t, "deploy.v1")
	cfg := DefaultConfig()
	cfg.Auth = false
	cfg.StopGrace = time.Second
	drv := driver.NewLocal(driver.LocalConfig{Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go,
		DataDir: h.DataDir(), Limits: "rlimit", Tick: 50 * time.Millisecond, StopGrace: time.Second})
	c := New(h, cfg, drv, "test")
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, a := range []string{"w", "bad"} {
			for _, p := range []string{"web", "bg"} {
				_ = drv.Remove(ctx, a, p)
			}
		}
		_ = c.Stop(ctx)
	})
	return &tc{t: t, h: h, c: c, srv: srv}
}

func (x *tc) do(method, path, ctype string, body []byte, out any) int {
	x.t.Helper()
	req, _ := http.NewRequest(method, x.srv.URL+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		x.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func (x *tc) js(method, path string, v any, out any) int {
	b, _ := json.Marshal(v)
	return x.do(method, path, "application/json", b, out)
}

func (x *tc) wait(ref map[string]any) Operation {
	x.t.Helper()
	id, _ := ref["operation"].(string)
	for i := 0; i < 300; i++ {
		var op Operation
		x.js("GET", "/api/v1/operations/"+id, nil, &op)
		if op.State == OpSucceeded || op.State == OpFailed {
			return op
		}
		time.Sleep(50 * time.Millisecond)
	}
	x.t.Fatalf("operation %s did not finish", id)
	return Operation{}
}

func TestFailedFirstDeployIsReportedAndCleaned(t *testing.T) {
	x := newConsole(t)
	if c := x.js("POST", "/api/v1/repos", map[string]string{"appname": "bad"}, nil); c != 201 {
		t.Fatalf("register: %d", c)
	}
	sp := "web:\n  cmd: echo boom; exit 7\n  healthcheck: {path: /, start: 2s}\n"
	var v Version
	if c := x.js("POST", "/api/v1/repos/bad/versions", map[string]any{"spec": sp, "files": map[string]string{"README": base64.StdEncoding.EncodeToString([]byte("x"))}}, &v); c != 201 {
		t.Fatalf("version: %d", c)
	}
	if !spec.MetaVersionRe.MatchString(v.MetaVersion) {
		t.Fatalf("generated meta_version %q", v.MetaVersion)
	}
	var ref map[string]any
	if c := x.js("POST", "/api/v1/apps", map[string]string{"appname": "bad"}, &ref); c != 202 {
		t.Fatalf("deploy: %d", c)
	}
	op := x.wait(ref)
	if op.State != OpFailed || !strings.Contains(op.Error, "status 7") || !strings.Contains(op.Error, "boom") || op.Procs["web"].State != OpFailed {
		t.Fatalf("operation: %+v", op)
	}
	var a appView
	x.js("GET", "/api/v1/apps/bad/", nil, &a)
	if a.State != "failed" || a.MetaVersion != "" || a.LastOperation == nil || a.LastOperation.State != OpFailed {
		t.Fatalf("app: %+v", a)
	}
	if st, ok := x.c.drv.Status("bad", "web"); ok && len(st.Instances) != 0 {
		t.Fatalf("instances left after a failed first deploy: %+v", st)
	}
}

func TestWorkerScaleAndProcRules(t *testing.T) {
	x := newConsole(t)
	x.js("POST", "/api/v1/repos/", map[string]string{"appname": "w"}, nil)
	sp := "worker.bg:\n  cmd: sleep 60\n  num_instances: 2\n  healthcheck: {grace: 100ms}\n"
	x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"spec": sp, "files": map[string]string{"x": ""}}, nil)
	var ref map[string]any
	x.js("POST", "/api/v1/apps/", map[string]string{"appname": "w"}, &ref)
	if op := x.wait(ref); op.State != OpSucceeded {
		t.Fatalf("deploy: %+v", op)
	}
	var p procView
	x.js("GET", "/api/v1/apps/w/procs/bg", nil, &p)
	if p.Running != 2 || p.Healthy != 2 || p.Limits == nil || p.Limits.Mode != "rlimit" {
		t.Fatalf("proc: %+v", p)
	}
	for _, in := range p.Instances {
		if _, err := os.Stat("/proc/" + itoa(in.PID)); err != nil {
			t.Fatalf("pid %d not running", in.PID)
		}
	}
	if c := x.js("PATCH", "/api/v1/apps/w/procs/bg/", map[string]any{"num_instances": 1, "memory": "64M"}, nil); c != 400 {
		t.Fatalf("scale+resize: %d", c)
	}
	if c := x.js("PATCH", "/api/v1/apps/w/procs/bg/", map[string]any{}, nil); c != 400 {
		t.Fatalf("empty patch: %d", c)
	}
	if c := x.js("PATCH", "/api/v1/apps/w/procs/bg/", map[string]any{"cpu": -1}, nil); c != 400 {
		t.Fatalf("negative cpu: %d", c)
	}
	x.js("PATCH", "/api/v1/apps/w/procs/bg/", map[string]any{"num_instances": 0}, &ref)
	if op := x.wait(ref); op.State != OpSucceeded {
		t.Fatalf("scale to 0: %+v", op)
	}
	x.js("GET", "/api/v1/apps/w/procs/bg", nil, &p)
	if p.Running != 0 || p.State != "stopped" {
		t.Fatalf("after scale to 0: %+v", p)
	}
	if c := x.js("POST", "/api/v1/apps/w/procs/", map[string]string{"procname": "bg"}, nil); c != 409 {
		t.Fatalf("deploy deployed proc: %d", c)
	}
	if c := x.js("GET", "/api/v1/operations/nope", nil, nil); c != 404 {
		t.Fatalf("unknown op: %d", c)
	}
	if c := x.js("DELETE", "/api/v1/apps/w/procs/bg", nil, &ref); c != 202 {
		t.Fatalf("delete proc: %d", c)
	}
	x.wait(ref)
}

// A log follow ends when the instance starts draining (a swap or unload),
// so that it does not hold the swap up until the host's drain deadline.
func TestLogFollowEndsOnDrain(t *testing.T) {
	x := newConsole(t)
	x.js("POST", "/api/v1/repos/", map[string]string{"appname": "w"}, nil)
	sp := "worker.bg:\n  cmd: while true; do echo tick; sleep 0.1; done\n  healthcheck: {grace: 100ms}\n"
	x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"spec": sp, "files": map[string]string{"x": ""}}, nil)
	var ref map[string]any
	x.js("POST", "/api/v1/apps/", map[string]string{"appname": "w"}, &ref)
	if op := x.wait(ref); op.State != OpSucceeded {
		t.Fatalf("deploy: %+v", op)
	}
	resp, err := http.Get(x.srv.URL + "/api/v1/apps/w/procs/bg/logs?tail=0&follow=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	if n, err := resp.Body.Read(buf); err != nil || !strings.Contains(string(buf[:n]), "tick") {
		t.Fatalf("follow before draining: %q %v", buf[:n], err)
	}
	x.h.StartDraining()
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow ended with %v, want a clean end", err)
		}
	case <-time.After(20 * time.Second): // a bound, not a speed target: without Draining it never ends
		t.Fatal("follow still running after the instance started draining")
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestUploadsRefuseEscapes(t *testing.T) {
	x := newConsole(t)
	x.js("POST", "/api/v1/repos/", map[string]string{"appname": "w"}, nil)
	sp := "worker.bg:\n  cmd: sleep 1\n"
	for _, name := range []string{"../evil", "/abs", "a/../../b"} {
		if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"spec": sp, "files": map[string]string{name: ""}}, nil); c != 400 {
			t.Fatalf("file %q: %d", name, c)
		}
	}
	tarball := func(name string) []byte {
		var buf bytes.Buffer
		gz := gzip.NewWriter(&buf)
		tw := tar.NewWriter(gz)
		for _, f := range []struct{ n, body string }{{"lain.yaml", sp}, {name, "x"}} {
			tw.WriteHeader(&tar.Header{Name: f.n, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
			tw.Write([]byte(f.body))
		}
		tw.Close()
		gz.Close()
		return buf.Bytes()
	}
	if c := x.do("POST", "/api/v1/repos/w/versions/", "application/gzip", tarball("../../x"), nil); c != 400 {
		t.Fatalf("tar escape: %d", c)
	}
	var v Version
	if c := x.do("POST", "/api/v1/repos/w/versions/?meta_version=1700000000-"+strings.Repeat("ab", 20), "application/gzip", tarball("bin/tool"), &v); c != 201 {
		t.Fatalf("tar upload: %d", c)
	}
	if len(v.Files) != 2 || v.Source != "upload" {
		t.Fatalf("version: %+v", v)
	}
	if _, err := os.Stat(filepath.Join(x.c.releaseDir("w", v.MetaVersion), "bin", "tool")); err != nil {
		t.Fatal(err)
	}
	// a path on this machine (an appbuild artifact, say) is copied
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "lain.yaml"), []byte(sp), 0o644)
	os.WriteFile(filepath.Join(dir, "run"), []byte("#!/bin/sh\n"), 0o755)
	if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"path": dir}, &v); c != 201 || len(v.Files) != 2 {
		t.Fatalf("path: %d %+v", c, v)
	}
	if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"path": "relative"}, nil); c != 400 {
		t.Fatalf("relative path: %d", c)
	}
	// a URL: an archive is unpacked, any other file saved under its name
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/build/app.tar.gz":
			w.Write(tarball("bin/fetched"))
		case "/build/tool":
			w.Write([]byte("#!/bin/sh\n"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"url": srv.URL + "/build/app.tar.gz"}, &v); c != 201 || len(v.Files) != 2 || v.Source != "url:"+srv.URL+"/build/app.tar.gz" {
		t.Fatalf("url archive: %d %+v", c, v)
	}
	if _, err := os.Stat(filepath.Join(x.c.releaseDir("w", v.MetaVersion), "bin", "fetched")); err != nil {
		t.Fatal(err)
	}
	if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"url": srv.URL + "/build/tool", "spec": sp}, &v); c != 201 || len(v.Files) != 1 || v.Files[0] != "tool" {
		t.Fatalf("url file: %d %+v", c, v)
	}
	for _, u := range []string{srv.URL + "/missing.tar.gz", "file:///etc/passwd", "ftp://x/y"} {
		if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"url": u, "spec": sp}, nil); c != 400 {
			t.Fatalf("url %q: %d", u, c)
		}
	}
	if c := x.js("POST", "/api/v1/repos/w/versions/", map[string]any{"url": srv.URL + "/build/tool", "path": dir, "spec": sp}, nil); c != 400 {
		t.Fatalf("url and path: %d", c)
	}
}
