package compat

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func settings(kv ...string) []debug.BuildSetting {
	var out []debug.BuildSetting
	for i := 0; i < len(kv); i += 2 {
		out = append(out, debug.BuildSetting{Key: kv[i], Value: kv[i+1]})
	}
	return out
}

// set replaces or adds a build setting.
func set(bi *debug.BuildInfo, key, value string) {
	for i := range bi.Settings {
		if bi.Settings[i].Key == key {
			bi.Settings[i].Value = value
			return
		}
	}
	bi.Settings = append(bi.Settings, debug.BuildSetting{Key: key, Value: value})
}

func hostInfo() *debug.BuildInfo {
	return &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Path:      "github.com/plugd/plugd/host",
		Main:      debug.Module{Path: "github.com/plugd/plugd", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "github.com/sirupsen/logrus", Version: "v1.10.2", Sum: "h1:logrus="},
			{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:sys="},
			{Path: "gopkg.in/yaml.v3", Version: "v3.0.1", Sum: "h1:yaml="},
			{Path: "example.com/local", Version: "v1.0.0", Sum: "h1:x=", Replace: &debug.Module{Path: "example.com/fork", Version: "v1.0.1", Sum: "h1:fork="}},
		},
		Settings: settings("-buildmode", "exe", "-compiler", "gc", "-trimpath", "true",
			"CGO_ENABLED", "1", "GOARCH", "amd64", "GOOS", "linux", "GOAMD64", "v1"),
	}
}

func pluginInfo() *debug.BuildInfo {
	return &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Path:      "plugd.build/hello_abc",
		Main:      debug.Module{Path: "plugd.build/hello_abc", Version: "(devel)"},
		Deps: []*debug.Module{
			// The host's main module comes from the workspace: not compared.
			{Path: "github.com/plugd/plugd", Version: "(devel)"},
			{Path: "github.com/sirupsen/logrus", Version: "v1.10.2", Sum: "h1:logrus="},
			{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:sys="},
			{Path: "example.com/local", Version: "v1.0.0", Sum: "h1:x=", Replace: &debug.Module{Path: "example.com/fork", Version: "v1.0.1", Sum: "h1:fork="}},
			// Only in the plugin: fine.
			{Path: "example.com/extra", Version: "v0.1.0", Sum: "h1:extra="},
		},
		Settings: settings("-buildmode", "plugin", "-compiler", "gc", "-trimpath", "true",
			"CGO_ENABLED", "1", "GOARCH", "amd64", "GOOS", "linux", "GOAMD64", "v3"),
	}
}

func TestCompareCompatible(t *testing.T) {
	if m := Compare(hostInfo(), pluginInfo()); len(m) != 0 {
		t.Fatalf("want no mismatch (GOAMD64 and -buildmode are not compared), got %v", m)
	}
	// Every item is still reported by Checks.
	cs := Checks(hostInfo(), pluginInfo())
	var whats []string
	for _, c := range cs {
		if !c.OK {
			t.Errorf("unexpected KO: %v", c)
		}
		whats = append(whats, c.What)
	}
	got := strings.Join(whats, ",")
	want := "go version,-trimpath,-race,-gcflags,-asan,-msan,-tags,CGO_ENABLED,GOOS,GOARCH,GOEXPERIMENT," +
		"module example.com/local,module github.com/sirupsen/logrus,module golang.org/x/sys"
	if got != want {
		t.Fatalf("checks\n got %s\nwant %s", got, want)
	}
}

func find(ms []Mismatch, what string) (Mismatch, bool) {
	for _, m := range ms {
		if m.What == what {
			return m, true
		}
	}
	return Mismatch{}, false
}

func TestCompareEachMismatch(t *testing.T) {
	cases := []struct {
		name   string
		change func(h, p *debug.BuildInfo)
		what   string
		host   string
		plugin string
		fix    string
	}{
		{"go version", func(h, p *debug.BuildInfo) { p.GoVersion = "go1.26.7" }, "go version", "go1.26.8", "go1.26.7", "GOTOOLCHAIN=go1.26.8"},
		{"trimpath absent", func(h, p *debug.BuildInfo) {
			p.Settings = settings("CGO_ENABLED", "1", "GOARCH", "amd64", "GOOS", "linux")
		}, "-trimpath", "true", "false", "pcompile"},
		{"race", func(h, p *debug.BuildInfo) {
			p.Settings = append(p.Settings, debug.BuildSetting{Key: "-race", Value: "true"})
		}, "-race", "false", "true", "pcompile"},
		{"gcflags", func(h, p *debug.BuildInfo) {
			h.Settings = append(h.Settings, debug.BuildSetting{Key: "-gcflags", Value: "all=-N -l"})
		}, "-gcflags", "all=-N -l", "", "pcompile"},
		{"asan", func(h, p *debug.BuildInfo) {
			p.Settings = append(p.Settings, debug.BuildSetting{Key: "-asan", Value: "true"})
		}, "-asan", "false", "true", ""},
		{"msan", func(h, p *debug.BuildInfo) {
			h.Settings = append(h.Settings, debug.BuildSetting{Key: "-msan", Value: "true"})
		}, "-msan", "true", "false", ""},
		{"tags", func(h, p *debug.BuildInfo) {
			p.Settings = append(p.Settings, debug.BuildSetting{Key: "-tags", Value: "netgo"})
		}, "-tags", "", "netgo", ""},
		{"cgo host off", func(h, p *debug.BuildInfo) {
			h.Settings = settings("-trimpath", "true", "CGO_ENABLED", "0", "GOARCH", "amd64", "GOOS", "linux")
		}, "CGO_ENABLED", "0", "1", "CGO_ENABLED=1"},
		{"goos", func(h, p *debug.BuildInfo) { set(p, "GOOS", "darwin") }, "GOOS", "linux", "darwin", ""},
		{"goarch", func(h, p *debug.BuildInfo) { set(p, "GOARCH", "arm64") }, "GOARCH", "amd64", "arm64", ""},
		{"goexperiment", func(h, p *debug.BuildInfo) {
			h.Settings = append(h.Settings, debug.BuildSetting{Key: "GOEXPERIMENT", Value: "greenteagc"})
		}, "GOEXPERIMENT", "greenteagc", "", ""},
		{"module version", func(h, p *debug.BuildInfo) {
			p.Deps[1] = &debug.Module{Path: "github.com/sirupsen/logrus", Version: "v1.9.3", Sum: "h1:old="}
		},
			"module github.com/sirupsen/logrus", "v1.10.2", "v1.9.3", "go get github.com/sirupsen/logrus@v1.9.3"},
		{"module sum", func(h, p *debug.BuildInfo) {
			p.Deps[2] = &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:other="}
		},
			"module golang.org/x/sys", "v0.49.0 h1:sys=", "v0.49.0 h1:other=", "different content"},
		{"module replaced in plugin only", func(h, p *debug.BuildInfo) {
			p.Deps[2] = &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:sys=", Replace: &debug.Module{Path: "/src/sys"}}
		}, "module golang.org/x/sys", "v0.49.0", "/src/sys", ""},
		{"replacement differs", func(h, p *debug.BuildInfo) {
			p.Deps[3] = &debug.Module{Path: "example.com/local", Version: "v1.0.0", Sum: "h1:x=", Replace: &debug.Module{Path: "example.com/fork", Version: "v1.0.2", Sum: "h1:fork2="}}
		}, "module example.com/local", "v1.0.1", "v1.0.2", "require example.com/local@v1.0.1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, p := hostInfo(), pluginInfo()
			c.change(h, p)
			ms := Compare(h, p)
			if len(ms) != 1 {
				t.Fatalf("want exactly one mismatch, got %d: %v", len(ms), ms)
			}
			m, ok := find(ms, c.what)
			if !ok {
				t.Fatalf("no %q mismatch in %v", c.what, ms)
			}
			if m.Host != c.host || m.Plugin != c.plugin {
				t.Errorf("got host %q plugin %q, want %q %q", m.Host, m.Plugin, c.host, c.plugin)
			}
			if !strings.Contains(m.Fix, c.fix) {
				t.Errorf("fix %q does not mention %q", m.Fix, c.fix)
			}
		})
	}
}

func TestCompareReportsAll(t *testing.T) {
	h, p := hostInfo(), pluginInfo()
	p.GoVersion = "go1.25.0"
	p.Settings = settings("-race", "true", "CGO_ENABLED", "1", "GOARCH", "amd64", "GOOS", "linux")
	p.Deps[1] = &debug.Module{Path: "github.com/sirupsen/logrus", Version: "v1.9.3"}
	ms := Compare(h, p)
	for _, w := range []string{"go version", "-trimpath", "-race", "module github.com/sirupsen/logrus"} {
		if _, ok := find(ms, w); !ok {
			t.Errorf("missing %q in %v", w, ms)
		}
	}
	if len(ms) != 4 {
		t.Errorf("want 4 mismatches, got %v", ms)
	}
}

func TestCompareNil(t *testing.T) {
	if ms := Compare(nil, pluginInfo()); len(ms) == 0 {
		t.Fatal("an empty host build info must not look compatible")
	}
}

func TestMismatchString(t *testing.T) {
	m := Mismatch{What: "-trimpath", Host: "true", Plugin: "false"}
	if got, want := m.String(), "-trimpath: host has true, plugin has false"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	m = Mismatch{What: "-tags", Host: "", Plugin: "x", Fix: "do y"}
	if got, want := m.String(), "-tags: host has (none), plugin has x; fix: do y"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	if strings.Contains(m.String(), "\n") {
		t.Error("String must be one line")
	}
}

func TestBuildModeCheck(t *testing.T) {
	if c := BuildModeCheck(pluginInfo()); !c.OK {
		t.Errorf("plugin build mode not accepted: %v", c)
	}
	c := BuildModeCheck(hostInfo())
	if c.OK || c.Plugin != "exe" || !strings.Contains(c.Fix, "not a Go plugin") {
		t.Errorf("exe accepted or badly reported: %+v", c)
	}
}

func TestHostBuildInfo(t *testing.T) {
	bi, err := HostBuildInfo()
	if err != nil {
		t.Fatal(err)
	}
	if bi.GoVersion == "" {
		t.Fatal("no Go version")
	}
}

// TestCheckFileErrors: files that are not Go plugins give an error naming
// what they are.
func TestCheckFileErrors(t *testing.T) {
	dir := t.TempDir()
	host := hostInfo()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	expectErr := func(path, want string) {
		t.Helper()
		ms, err := CheckFile(path, host)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, %v; want error containing %q", filepath.Base(path), ms, err, want)
		}
	}
	expectErr(write("text.so", []byte("hello, this is text\n")), "not an ELF file")
	expectErr(write("empty.so", nil), "not an ELF file")
	expectErr(filepath.Join(dir, "missing.so"), "no such file")
	expectErr(dir, "not a regular file")

	// A real ELF file that is not Go: the C compiler's output, if there is one.
	if cc, err := exec.LookPath("cc"); err == nil {
		src := write("x.c", []byte("int f(void){return 1;}\n"))
		out := filepath.Join(dir, "c.so")
		if b, err := exec.Command(cc, "-shared", "-fPIC", "-o", out, src).CombinedOutput(); err != nil {
			t.Fatalf("cc: %v\n%s", err, b)
		}
		expectErr(out, "not a Go binary")
	}

	// The running test binary is a Go ELF executable: readable, not a plugin,
	// and truncating it is detected.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ms, err := CheckFile(self, host)
	if err != nil {
		t.Fatalf("test binary: %v", err)
	}
	if _, ok := find(ms, "-buildmode"); !ok {
		t.Errorf("an executable must be reported as not a plugin: %v", ms)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{64, len(data) / 2, len(data) - 100} {
		expectErr(write("trunc.so", data[:n]), "truncated")
	}
}

// TestPackageHashesWithoutPlugin: a binary that does not import "plugin"
// (this test binary) has no package fingerprints; that is not an error, and
// ComparePackages says nothing was compared.
func TestPackageHashesWithoutPlugin(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h, err := PackageHashes(self)
	if err != nil || len(h) != 0 {
		t.Fatalf("got %d hashes, %v", len(h), err)
	}
	ms, n, err := ComparePackages(self, self)
	if err != nil || n != 0 || len(ms) != 0 {
		t.Fatalf("got %v %d %v", ms, n, err)
	}
	if _, _, err := ComparePackages(self, filepath.Join(t.TempDir(), "missing.so")); err == nil || !strings.Contains(err.Error(), "plugin") {
		t.Fatalf("a missing plugin file: %v", err)
	}
}
