// Package testhost runs the real plugd binary for end-to-end tests: it
// builds plugd and pcompile (or uses PLUGD_BIN and PCOMPILE_BIN), starts the
// host on a free loopback port with its own plugins and data dirs, builds
// plugins with pcompile and loads them over HTTP.
package testhost

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce          sync.Once
	plugdBin, pcompBin string
	buildErr           error
)

// RepoRoot is the directory of the module's go.mod.
func RepoRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(raw, []byte("module github.com/plugd/plugd\n")) {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testhost: go.mod of github.com/plugd/plugd not found above the working directory")
		}
		dir = parent
	}
}

// Binaries returns plugd and pcompile, built once per test process with the
// flags `make build` uses, unless PLUGD_BIN and PCOMPILE_BIN name them.
func Binaries(t testing.TB) (plugd, pcompile string) {
	root := RepoRoot(t)
	buildOnce.Do(func() {
		if p, c := os.Getenv("PLUGD_BIN"), os.Getenv("PCOMPILE_BIN"); p != "" && c != "" {
			plugdBin, pcompBin = abs(root, p), abs(root, c)
			return
		}
		dir, err := os.MkdirTemp("", "testhost-bin-")
		if err != nil {
			buildErr = err
			return
		}
		plugdBin, pcompBin = filepath.Join(dir, "plugd"), filepath.Join(dir, "pcompile")
		for out, pkg := range map[string]string{plugdBin: "./host", pcompBin: "./pcompile"} {
			cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return plugdBin, pcompBin
}

func abs(root, p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(root, p)
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Options configure Start.
type Options struct {
	// Config is YAML appended to the generated config (e.g. a plugins:
	// section). Keys the generated part sets must not be repeated.
	Config string
	// Watch turns the drop-in watcher on (off by default in tests, so
	// that compiling a plugin does not load it behind the test's back).
	Watch bool
	// CheckTimeout bounds the trial load (default 60s: CI machines are slow).
	CheckTimeout string
	// DrainTimeout is how long a replaced version may finish its work
	// (default 20s).
	DrainTimeout string
	// Env is added to the host's environment.
	Env []string
}

// Host is a running plugd.
type Host struct {
	URL        string
	Addr       string
	PluginsDir string
	DataDir    string
	ConfigPath string

	t       testing.TB
	opt     Options
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

// Start runs plugd with fresh dirs; it is stopped when the test ends.
func Start(t testing.TB, opt Options) *Host {
	t.Helper()
	dir := t.TempDir()
	h := &Host{t: t, opt: opt, PluginsDir: filepath.Join(dir, "plugins"), DataDir: filepath.Join(dir, "data"),
		ConfigPath: filepath.Join(dir, "plugd.yaml"), logPath: filepath.Join(dir, "plugd.log")}
	h.Addr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	h.URL = "http://" + h.Addr
	if opt.CheckTimeout == "" {
		opt.CheckTimeout = "60s"
	}
	if opt.DrainTimeout == "" {
		opt.DrainTimeout = "20s"
	}
	cfg := fmt.Sprintf("listen: %s\nplugins_dir: %s\ndata_dir: %s\nwatch: %v\ncheck_timeout: %s\ndrain_timeout: %s\n%s\n",
		h.Addr, h.PluginsDir, h.DataDir, opt.Watch, opt.CheckTimeout, opt.DrainTimeout, opt.Config)
	if err := os.MkdirAll(h.PluginsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.ConfigPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.start()
	t.Cleanup(func() {
		h.Stop()
		if t.Failed() {
			t.Logf("plugd log (last 60 lines):\n%s", tail(h.Log(), 60))
		}
	})
	return h
}

func (h *Host) start() {
	h.t.Helper()
	plugd, _ := Binaries(h.t)
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	h.cmd = exec.Command(plugd, "-config", h.ConfigPath)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.Env = append(os.Environ(), h.opt.Env...)
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.exited = make(chan struct{})
	go func() { h.cmd.Wait(); logf.Close(); close(h.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-h.exited:
			h.t.Fatalf("plugd exited at start: %s", tail(h.Log(), 30))
		default:
		}
		if resp, err := http.Get(h.URL + "/apim/v1/apis"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatalf("plugd did not answer within 60s: %s", tail(h.Log(), 30))
}

// Pid is the host process's pid.
func (h *Host) Pid() int { return h.cmd.Process.Pid }

// Stop sends SIGTERM and waits (SIGKILL after 60s). Idempotent.
func (h *Host) Stop() {
	select {
	case <-h.exited:
		return
	default:
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(60 * time.Second):
		syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-h.exited
		h.t.Errorf("plugd did not stop within 60s of SIGTERM")
	}
}

// Restart stops the host and starts it again with the same dirs and config.
func (h *Host) Restart(t testing.TB) {
	t.Helper()
	h.Stop()
	h.start()
}

// Log is everything the host has logged so far.
func (h *Host) Log() string {
	b, _ := os.ReadFile(h.logPath)
	return string(b)
}

// Compile builds <repo>/<pluginDir> (or an absolute dir) with pcompile into
// PluginsDir and returns the new file's base name.
func (h *Host) Compile(t testing.TB, pluginDir string) string {
	t.Helper()
	plugd, pcompile := Binaries(t)
	dir := pluginDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(RepoRoot(t), dir)
	}
	cmd := exec.Command(pcompile, "-o", h.PluginsDir, "-host", plugd, "-src", RepoRoot(t), dir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("pcompile %s: %v\n%s", pluginDir, err, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return filepath.Base(lines[len(lines)-1])
}

// Do sends a request and returns the status and body.
func (h *Host) Do(t testing.TB, method, path string, body io.Reader, header ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, h.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (h *Host) must(t testing.TB, method, path string) {
	t.Helper()
	if code, body := h.Do(t, method, path, nil); code != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, code, body)
	}
}

// LoadAPI loads file as nameVersion (e.g. gateway.v1); the test fails unless 200.
func (h *Host) LoadAPI(t testing.TB, nameVersion, file string) {
	t.Helper()
	h.must(t, "POST", "/apim/v1/"+nameVersion+"?file="+file)
}

// LoadSLP loads file as SLP name; the test fails unless 200.
func (h *Host) LoadSLP(t testing.TB, name, file string) {
	t.Helper()
	h.must(t, "POST", "/slpm/v1/"+name+"?file="+file)
}

// Unload deletes API nameVersion; the test fails unless 200.
func (h *Host) Unload(t testing.TB, nameVersion string) {
	t.Helper()
	h.must(t, "DELETE", "/apim/v1/"+nameVersion)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
