package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/internal/testhost"
)

// Each bad file is refused with its reason, the host keeps serving, and a
// good plugin loads afterwards.
func TestBadPluginsRefusedThenGoodLoads(t *testing.T) {
	h := testhost.Start(t, testhost.Options{CheckTimeout: "5s"})
	good := buildEcho(t, h, "good")
	write := func(name string, data []byte) string {
		if err := os.WriteFile(filepath.Join(h.PluginsDir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	goodBytes, _ := os.ReadFile(filepath.Join(h.PluginsDir, good))

	cases := []struct {
		name, file, want string
	}{
		{"not an ELF", write("notelf.so", []byte("hello, I am not a plugin\n")), "not"},
		{"truncated", write("truncated.so", goodBytes[:len(goodBytes)/2]), ""},
		{"no -trimpath", plainBuild(t, h), "-trimpath"},
		{"other dependency version", otherDepBuild(t, h), "github.com/sirupsen/logrus"},
		{"other SDK source", otherSDKBuild(t, h), "package github.com/plugd/plugd/sdk: host has"},
		{"init panics", h.Compile(t, echoSource(t, nil, "", map[string]string{"bad.go": "package main\n\nfunc init() { panic(\"init boom\") }\n"})), "init boom"},
		{"init hangs", h.Compile(t, echoSource(t, nil, "", map[string]string{"bad.go": "package main\n\nimport \"time\"\n\nfunc init() { time.Sleep(time.Hour) }\n"})), "did not finish within 5s"},
		{"missing symbol", h.Compile(t, echoSource(t, map[string]string{"var Plugin = ": "var NotPlugin = "}, "", nil)), "no exported Plugin symbol"},
		{"wrong ABI", h.Compile(t, echoSource(t, map[string]string{"ABI: sdk.ABIVersion": "ABI: 999"}, "", nil)), "ABI version 999"},
	}
	for _, c := range cases {
		code, body := h.Do(t, "POST", "/apim/v1/echo.v1?file="+c.file, nil)
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d %q, want 422 containing %q", c.name, code, body, c.want)
		} else {
			t.Logf("%s: refused: %s", c.name, strings.TrimSpace(body))
		}
		if code, _ := h.Do(t, "GET", "/apim/v1/apis", nil); code != 200 {
			t.Fatalf("host stopped answering after %s", c.name)
		}
	}
	h.LoadAPI(t, "echo.v1", good)
	if code, body := h.Do(t, "GET", "/echo/v1/x", nil); code != 200 || body != "good:/x" {
		t.Fatalf("good plugin after bad ones: %d %q", code, body)
	}
}

// plainBuild builds the echo plugin with plain `go build` (no -trimpath),
// the classic mistake pcompile exists to prevent.
func plainBuild(t *testing.T, h *testhost.Host) string {
	dir := standalone(t, nil)
	run(t, dir, standaloneEnv, "go", "build", "-buildmode=plugin", "-o", filepath.Join(h.PluginsDir, "plain.so"), ".")
	return "plain.so"
}

// otherDepBuild builds the echo plugin with -trimpath but an older logrus
// than the host's.
func otherDepBuild(t *testing.T, h *testhost.Host) string {
	dir := standalone(t, map[string]string{"dep.go": "package main\n\nimport _ \"github.com/sirupsen/logrus\"\n"})
	f, _ := os.OpenFile(filepath.Join(dir, "go.mod"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("replace github.com/sirupsen/logrus => github.com/sirupsen/logrus v1.9.0\n")
	f.Close()
	run(t, dir, standaloneEnv, "go", "build", "-trimpath", "-buildmode=plugin", "-o", filepath.Join(h.PluginsDir, "otherdep.so"), ".")
	return "otherdep.so"
}

// otherSDKBuild builds the echo plugin with -trimpath against a copy of the
// SDK with one function added: its build info matches the host's, only the
// package fingerprints differ.
func otherSDKBuild(t *testing.T, h *testhost.Host) string {
	root := testhost.RepoRoot(t)
	tree := t.TempDir()
	run(t, root, nil, "cp", "-r", "go.mod", "go.sum", "sdk", tree)
	if err := os.WriteFile(filepath.Join(tree, "sdk", "zz_extra.go"), []byte("package sdk\n\nfunc Extra() int { return 1 }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := echoSource(t, nil, "", nil)
	f, _ := os.OpenFile(filepath.Join(dir, "go.mod"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("replace github.com/plugd/plugd => " + tree + "\n")
	f.Close()
	run(t, dir, standaloneEnv, "go", "build", "-trimpath", "-buildmode=plugin", "-o", filepath.Join(h.PluginsDir, "othersdk.so"), ".")
	return "othersdk.so"
}

// standalone is an echo module that builds on its own, without pcompile's
// workspace: the SDK comes from the repo through a replace directive.
func standalone(t *testing.T, extra map[string]string) string {
	dir := echoSource(t, nil, "", extra)
	f, _ := os.OpenFile(filepath.Join(dir, "go.mod"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("replace github.com/plugd/plugd => " + testhost.RepoRoot(t) + "\n")
	f.Close()
	return dir
}

var standaloneEnv = []string{"GOWORK=off", "GOFLAGS=-mod=mod"}

func run(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=1"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// File names that escape the plugins dir are refused before anything is read.
func TestTraversalNamesRefused(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	outside := filepath.Join(t.TempDir(), "evil.so")
	os.WriteFile(outside, []byte("x"), 0o644)
	os.Symlink(outside, filepath.Join(h.PluginsDir, "link.so"))
	os.Mkdir(filepath.Join(h.PluginsDir, "dir.so"), 0o755)
	for _, f := range []string{"../x.so", "..%2Fx.so", "%2Fetc%2Fx.so", "a/b.so", "a%2Fb.so", "link.so", "dir.so", "x.txt", "", ".hidden.so"} {
		code, body := h.Do(t, "POST", "/apim/v1/echo.v1?file="+f, nil)
		if code != http.StatusBadRequest {
			t.Errorf("file=%s: %d %q, want 400", f, code, body)
		}
	}
	if code, _ := h.Do(t, "POST", "/apim/v1/echo.v1?file=missing.so", nil); code != http.StatusNotFound {
		t.Errorf("missing file: %d, want 404", code)
	}
	for _, name := range []string{"Echo.v1", "echo", "echo.v0", "echo.1", "runtime.v2", "slp.v1"} {
		if code, _ := h.Do(t, "POST", "/apim/v1/"+name+"?file=x.so", nil); code != http.StatusBadRequest && code != http.StatusForbidden {
			t.Errorf("API name %s: %d, want 400/403", name, code)
		}
	}
	for _, b := range []string{"runtime.v1", "apim.v1", "slpm.v1"} {
		if code, _ := h.Do(t, "DELETE", "/apim/v1/"+b, nil); code != http.StatusForbidden {
			t.Errorf("DELETE built-in %s: %d, want 403", b, code)
		}
	}
	if code, _ := h.Do(t, "PUT", "/runtime/v1/stack", nil); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT stack: %d, want 405", code)
	}
	if code, body := h.Do(t, "GET", "/runtime/v1/stack", nil); code != 200 || !strings.Contains(body, "goroutine ") {
		t.Errorf("stack: %d", code)
	}
	if code, body := h.Do(t, "GET", "/apim/v1/apis", nil, "Accept", "application/json"); code != 200 || !strings.HasPrefix(body, "[") || !strings.Contains(body, `"runtime.v1"`) {
		t.Errorf("JSON listing: %d %q", code, body)
	}
}

// The loaded set survives a restart; a plugin whose file is gone is listed
// as failed and the host starts anyway; the store survives both.
func TestRestartRestoresLoadedSet(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f := buildEcho(t, h, "build-1")
	h.LoadAPI(t, "echo.v1", f)
	h.LoadSLP(t, "echo", f)
	if code, _ := h.Do(t, "PUT", "/echo/v1/store?v=kept", nil); code != 200 {
		t.Fatal("store put")
	}
	h.Restart(t)
	if code, body := h.Do(t, "GET", "/echo/v1/store", nil); code != 200 || body != "kept" {
		t.Fatalf("after restart: %d %q", code, body)
	}
	if _, l := h.Do(t, "GET", "/slpm/v1/slps", nil); !strings.Contains(l, "echo\t0\t0\t"+f) {
		t.Fatalf("SLP not restored:\n%s", l)
	}
	os.Remove(filepath.Join(h.PluginsDir, f))
	h.Restart(t)
	_, l := h.Do(t, "GET", "/apim/v1/apis", nil)
	if !strings.Contains(l, "echo.v1\t"+f+"\tfailed") {
		t.Fatalf("missing plugin not listed as failed:\n%s", l)
	}
	g := buildEcho(t, h, "build-2")
	h.LoadAPI(t, "echo.v1", g)
	if code, body := h.Do(t, "GET", "/echo/v1/store", nil); code != 200 || body != "kept" {
		t.Fatalf("store after failed restore and new build: %d %q", code, body)
	}
}

// Drop-in: a completed .so loads under its declared name, a newer build
// swaps in, temp files are ignored, a removed file unloads.
func TestDropInDirectory(t *testing.T) {
	h := testhost.Start(t, testhost.Options{Watch: true})
	os.WriteFile(filepath.Join(h.PluginsDir, ".echo.so.swp"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(h.PluginsDir, "half.so"), []byte("\x7fELF\x02\x01\x01"), 0o644)
	f1 := buildEcho(t, h, "drop-1")
	eventually(t, "drop-in load of build 1", 60*time.Second, func() bool {
		_, body := h.Do(t, "GET", "/echo/v1/x", nil)
		return body == "drop-1:/x"
	})
	if _, l := h.Do(t, "GET", "/slpm/v1/slps", nil); !strings.Contains(l, f1) {
		t.Errorf("SLP of the dropped plugin not loaded:\n%s", l)
	}
	buildEcho(t, h, "drop-2")
	eventually(t, "drop-in swap to build 2", 60*time.Second, func() bool {
		_, body := h.Do(t, "GET", "/echo/v1/x", nil)
		return body == "drop-2:/x"
	})
	if _, l := h.Do(t, "GET", "/apim/v1/apis", nil); strings.Contains(l, "half.so") || strings.Contains(l, "swp") {
		t.Errorf("temp or half-written file loaded:\n%s", l)
	}
	_, l := h.Do(t, "GET", "/apim/v1/apis", nil)
	var f2 string
	for _, line := range strings.Split(l, "\n") {
		if strings.HasPrefix(line, "echo.v1\t") {
			f2 = strings.Split(line, "\t")[1]
		}
	}
	os.Remove(filepath.Join(h.PluginsDir, f2))
	eventually(t, "unload after removal", 30*time.Second, func() bool {
		code, _ := h.Do(t, "GET", "/echo/v1/x", nil)
		return code == 404
	})
}

// Config errors stop the host with the key and line; a non-loopback
// listen address without a token is refused.
func TestConfigStrictAndTokenRule(t *testing.T) {
	plugd, _ := testhost.Binaries(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "plugd.yaml")
	os.WriteFile(cfg, []byte("listen: 127.0.0.1:0\nplugins_dir: "+dir+"\ndata_dir: "+dir+"\nlistne: x\n"), 0o644)
	out, err := exec.Command(plugd, "-config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "line 4") || !strings.Contains(string(out), "listne") {
		t.Errorf("unknown key: err=%v out=%s", err, out)
	}
	out, err = exec.Command(plugd, "-listen", "0.0.0.0:0", "-plugins", dir, "-data", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "token") {
		t.Errorf("non-loopback without token: err=%v out=%s", err, out)
	}
}

// The access log writes one line per request by default; log.access: false
// turns it off and leaves the other log lines.
func TestAccessLogSwitch(t *testing.T) {
	on := testhost.Start(t, testhost.Options{})
	off := testhost.Start(t, testhost.Options{Config: "log:\n  access: false\n"})
	for _, h := range []*testhost.Host{on, off} {
		if code, _ := h.Do(t, "GET", "/apim/v1/apis", nil); code != 200 {
			t.Fatalf("list APIs: %d", code)
		}
	}
	eventually(t, "access line on the default host", 5*time.Second, func() bool {
		return strings.Contains(on.Log(), "path=/apim/v1/apis")
	})
	if strings.Contains(off.Log(), "path=/apim/v1/apis") {
		t.Fatalf("log.access: false still logs requests:\n%s", off.Log())
	}
	if !strings.Contains(off.Log(), "listen") {
		t.Fatalf("log.access: false silenced the rest of the log:\n%s", off.Log())
	}
}
