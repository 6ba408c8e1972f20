package main

// These tests build real binaries: pcompile itself, a minimal host
// (internal/loadtest, built with -trimpath like plugd) and real plugins,
// and load the plugins with plugin.Open in one host process.

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/internal/compat"
)

var (
	toolsOnce sync.Once
	toolsDir  string
	toolsErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if toolsDir != "" {
		os.RemoveAll(toolsDir)
	}
	os.Exit(code)
}

// repoRoot is the host's source tree: the parent of this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// tools builds pcompile and the test host once per test process.
func tools(t testing.TB) (pcompile, host string) {
	t.Helper()
	toolsOnce.Do(func() {
		toolsDir, toolsErr = os.MkdirTemp("", "pcompile-test-")
		if toolsErr != nil {
			return
		}
		root, _ := filepath.Abs("..")
		if toolsErr = goCmd(root, nil, "build", "-o", filepath.Join(toolsDir, "pcompile"), "./pcompile"); toolsErr != nil {
			return
		}
		toolsErr = goCmd(root, nil, "build", "-trimpath", "-o", filepath.Join(toolsDir, "host"), "./pcompile/internal/loadtest")
	})
	if toolsErr != nil {
		t.Fatal(toolsErr)
	}
	return filepath.Join(toolsDir, "pcompile"), filepath.Join(toolsDir, "host")
}

type runResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

// pcompile runs the pcompile binary with TMPDIR set to tmp (so the test can
// see that build dirs are removed).
func pcompile(t *testing.T, tmp string, args ...string) runResult {
	t.Helper()
	pc, _ := tools(t)
	cmd := exec.Command(pc, args...)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := runResult{stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("pcompile %v: %v", args, err)
	}
	return r
}

var soName = regexp.MustCompile(`^[a-z0-9_]+-[0-9a-z]+-[0-9a-f]{12}\.so$`)

// build runs pcompile -v on one plugin dir and returns the printed path,
// the time it took and the packages go build compiled.
func build(t *testing.T, out, dir string) (string, time.Duration, []string) {
	t.Helper()
	_, host := tools(t)
	tmp := t.TempDir()
	r := pcompile(t, tmp, "-v", "-host", host, "-src", repoRoot(t), "-o", out, dir)
	if r.code != 0 {
		t.Fatalf("pcompile %s: exit %d\n%s", dir, r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 1 {
		t.Fatalf("pcompile %s: want one path on stdout, got %q", dir, r.stdout)
	}
	path := lines[0]
	if filepath.Dir(path) != filepath.Clean(out) || !soName.MatchString(filepath.Base(path)) {
		t.Fatalf("printed path %q is not <out>/<name>-<buildid>.so", path)
	}
	if st, err := os.Stat(path); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("printed path %s: %v", path, err)
	}
	left, _ := os.ReadDir(tmp)
	if len(left) != 0 {
		t.Errorf("pcompile left %d entries in its temp dir (first %s)", len(left), left[0].Name())
	}
	var compiled []string
	for _, m := range regexp.MustCompile(`(?m)^pcompile: \S+: compiled (\S+)$`).FindAllStringSubmatch(r.stderr, -1) {
		compiled = append(compiled, m[1])
	}
	return path, r.took, compiled
}

// onlyPluginCompiled fails unless every package go build compiled (did not
// take from the cache) is one of the plugin's own, renamed packages.
func onlyPluginCompiled(t *testing.T, what string, compiled []string, want int) {
	t.Helper()
	n := 0
	for _, p := range compiled {
		if !strings.HasPrefix(p, buildModulePrefix) {
			t.Errorf("%s: shared package %s was recompiled instead of coming from the build cache", what, p)
		}
		n++
	}
	if n != want {
		t.Errorf("%s: compiled %d packages %v, want the plugin's %d", what, n, compiled, want)
	}
}

// load opens all files in ONE host process and returns its output lines.
func load(t *testing.T, files ...string) []string {
	t.Helper()
	_, host := tools(t)
	out, err := exec.Command(host, files...).CombinedOutput()
	if err != nil {
		t.Fatalf("host failed to load the plugins: %v\n%s", err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func edit(t *testing.T, file, old, new string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("%s does not contain %q", file, old)
	}
	if err := os.WriteFile(file, bytes.ReplaceAll(data, []byte(old), []byte(new)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestSuccessiveBuildsLoadInOneProcess: builds of the same plugin, with a
// changed line in main and in a subpackage between builds, and a plugin in
// its own module, all load into one host process.
func TestSuccessiveBuildsLoadInOneProcess(t *testing.T) {
	out := t.TempDir()
	root := repoRoot(t)

	// In-tree: the same source twice. Without a new plugin path per build,
	// the second open would fail with "plugin already loaded".
	intree1, first, _ := build(t, out, filepath.Join(root, "pcompile", "testdata", "hello"))
	intree2, again, compiled := build(t, out, filepath.Join(root, "pcompile", "testdata", "hello"))
	// Everything shared comes from the build cache: only the plugin's two
	// packages (main and greet, under their new path) are compiled.
	onlyPluginCompiled(t, "second in-tree build", compiled, 2)

	// A copy of hello as its own module, edited between builds.
	mod := filepath.Join(t.TempDir(), "hello")
	copyDir(t, filepath.Join(root, "pcompile", "testdata", "hello"), mod)
	edit(t, filepath.Join(mod, "main.go"), "github.com/plugd/plugd/pcompile/testdata/hello/greet", "example.com/hello/greet")
	gomod := "module example.com/hello\n\ngo 1.26\n\nrequire github.com/plugd/plugd v0.0.0-00010101000000-000000000000\n"
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	// Files pcompile must leave out: none of them compiles.
	for name, data := range map[string]string{
		"testdata/broken.go": "package broken; not Go", ".hidden.go": "not Go",
		"greet/broken_test.go": "package greet; not Go", "nested/go.mod": "module nested\n", "nested/x.go": "not Go",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(mod, name)), 0o755)
		if err := os.WriteFile(filepath.Join(mod, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v1, _, _ := build(t, out, mod)
	edit(t, filepath.Join(mod, "main.go"), `"main-1"`, `"main-2"`)
	edit(t, filepath.Join(mod, "greet", "greet.go"), `"greet-1"`, `"greet-2"`)
	v2, oneLine, compiled := build(t, out, mod)
	onlyPluginCompiled(t, "build after a one-line change", compiled, 2)
	edit(t, filepath.Join(mod, "greet", "greet.go"), `return "greet-2"`, `return strings.ToUpper("greet-3")`)
	edit(t, filepath.Join(mod, "greet", "greet.go"), "package greet\n", "package greet\n\nimport \"strings\"\n")
	edit(t, filepath.Join(mod, "main.go"), `"main-2"`, `"main-3"`)
	v3, _, compiled := build(t, out, mod)
	onlyPluginCompiled(t, "build after a change with a new import", compiled, 2)

	// A plugin in its own module outside the tree, requiring an older
	// logrus than the host (MVS selects the host's).
	ext, _, _ := build(t, out, filepath.Join(root, "pcompile", "testdata", "extmod"))

	files := []string{intree1, intree2, v1, v2, v3, ext}
	got := load(t, files...)
	want := []string{
		"hello v1 main-1 greet-1", "hello v1 main-1 greet-1", "hello v1 main-1 greet-1",
		"hello v1 main-2 greet-2", "hello v1 main-3 GREET-3", "extmod v1 ext-1 info",
	}
	if len(got) != len(want) {
		t.Fatalf("host output:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if exp := "OK " + files[i] + " " + want[i]; got[i] != exp {
			t.Errorf("plugin %d: got %q, want %q", i, got[i], exp)
		}
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary output %s left in the plugins dir", e.Name())
		}
	}
	if len(entries) != len(files) {
		t.Errorf("plugins dir has %d files, want %d", len(entries), len(files))
	}
	t.Logf("build times: first %v, same source again %v, after a one-line change %v", first, again, oneLine)
}

// TestNewerDependencyRefused: a plugin requiring a newer httprouter than
// the host's is refused before building, naming module, versions and fix.
func TestNewerDependencyRefused(t *testing.T) {
	_, host := tools(t)
	out := filepath.Join(t.TempDir(), "plugins")
	r := pcompile(t, t.TempDir(), "-host", host, "-src", repoRoot(t), "-o", out, filepath.Join(repoRoot(t), "pcompile", "testdata", "newdep"))
	if r.code != 1 {
		t.Fatalf("exit %d, want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"module github.com/julienschmidt/httprouter", "host has v1.3.0",
		"v1.3.1-0.20200921135023-fe77dd05ab5a",
		"go get github.com/julienschmidt/httprouter@v1.3.1-0.20200921135023-fe77dd05ab5a",
		"require github.com/julienschmidt/httprouter@v1.3.0",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.TrimSpace(r.stdout) != "" {
		t.Errorf("a refused build printed a path: %q", r.stdout)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a refused build left %d files in the output dir", len(entries))
	}
}

// patchHost writes a copy of the test host with every old replaced by new
// (same length, so the build info stays well formed): a cheap way to get a
// host binary whose build info says something else.
func patchHost(t *testing.T, old, new string) string {
	t.Helper()
	if len(old) != len(new) {
		t.Fatalf("patch %q -> %q changes the length", old, new)
	}
	_, host := tools(t)
	data, err := os.ReadFile(host)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(old)) {
		t.Fatalf("host binary does not contain %q", old)
	}
	fake := filepath.Join(t.TempDir(), "plugd")
	if err := os.WriteFile(fake, bytes.ReplaceAll(data, []byte(old), []byte(new)), 0o755); err != nil {
		t.Fatal(err)
	}
	return fake
}

// TestHostWithoutCgoRefused: a CGO_ENABLED=0 host cannot load plugins.
func TestHostWithoutCgoRefused(t *testing.T) {
	// The build info of a host built with CGO_ENABLED=0 (building one for
	// real recompiles the standard library: slow on a cold cache).
	nocgo := patchHost(t, "\tCGO_ENABLED=1\n", "\tCGO_ENABLED=0\n")
	r := pcompile(t, t.TempDir(), "-host", nocgo, "-src", repoRoot(t), "-o", t.TempDir(), filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))
	if r.code != 1 || !strings.Contains(r.stderr, "CGO_ENABLED=0") || !strings.Contains(r.stderr, "cannot load plugins") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

// TestToolchainMismatchRefused: a host whose recorded Go version differs
// from the local toolchain is refused, naming both.
func TestToolchainMismatchRefused(t *testing.T) {
	v, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	local := strings.TrimSpace(string(v))
	other := local[:len(local)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(local, "0")]
	fake := patchHost(t, local, other)
	r := pcompile(t, t.TempDir(), "-host", fake, "-src", repoRoot(t), "-o", t.TempDir(), filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))
	if r.code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"toolchain mismatch", local, other, "GOTOOLCHAIN=" + other} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

// TestCheck: `pcompile check` reports each item, exits 1 on a mismatch and
// 2 on an unreadable file.
func TestCheck(t *testing.T) {
	_, host := tools(t)
	dir := t.TempDir()
	check := func(file string) runResult {
		return pcompile(t, t.TempDir(), "check", "-host", host, file)
	}

	// Built by plain go build, without the host's -trimpath.
	plain := filepath.Join(dir, "bare.so")
	if err := goCmd(repoRoot(t), nil, "build", "-buildmode=plugin", "-o", plain, "./pcompile/testdata/bare"); err != nil {
		t.Fatal(err)
	}
	r := check(plain)
	if r.code != 1 {
		t.Fatalf("plain build: exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"[KO] -trimpath: host has true, plugin has false", "[OK] go version", "[OK] CGO_ENABLED: 1",
		"[KO] package internal/goarch: host has ", "Fixes:", "rebuild the plugin with pcompile"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}

	// A pcompile build passes, module lines included.
	good, _, _ := build(t, dir, filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))
	r = check(good)
	if r.code != 0 || strings.Contains(r.stdout, "[KO]") || !strings.Contains(r.stdout, "[OK] module github.com/sirupsen/logrus") ||
		!regexp.MustCompile(`\[OK\] packages: [1-9][0-9]+ shared packages have the same fingerprint`).MatchString(r.stdout) {
		t.Fatalf("pcompile build: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// An executable is not a plugin.
	r = check(host)
	if r.code != 1 || !strings.Contains(r.stdout, "[KO] -buildmode: want plugin, file has exe") {
		t.Fatalf("executable: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// Unreadable files: exit 2 with the reason.
	text := filepath.Join(dir, "text.so")
	os.WriteFile(text, []byte("not a plugin\n"), 0o644)
	data, _ := os.ReadFile(good)
	trunc := filepath.Join(dir, "trunc.so")
	os.WriteFile(trunc, data[:len(data)/2], 0o644)
	for file, want := range map[string]string{text: "not an ELF file", trunc: "truncated", filepath.Join(dir, "missing.so"): "no such file"} {
		r = check(file)
		if r.code != 2 || !strings.Contains(r.stderr, want) {
			t.Errorf("%s: exit %d, want 2 and %q\n%s", filepath.Base(file), r.code, want, r.stderr)
		}
	}
}

// TestKeep: -keep keeps the build dir and says where; its go.work uses the
// host's source tree.
func TestKeep(t *testing.T) {
	_, host := tools(t)
	tmp := t.TempDir()
	r := pcompile(t, tmp, "-keep", "-host", host, "-src", repoRoot(t), "-o", t.TempDir(), filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))
	if r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	m := regexp.MustCompile(`build dir kept at (\S+)`).FindStringSubmatch(r.stderr)
	if m == nil || !strings.HasPrefix(m[1], tmp) {
		t.Fatalf("no kept build dir under %s in:\n%s", tmp, r.stderr)
	}
	work, err := os.ReadFile(filepath.Join(m[1], "go.work"))
	if err != nil || !strings.Contains(string(work), fmt.Sprintf("%q", repoRoot(t))) {
		t.Fatalf("go.work: %v\n%s", err, work)
	}
	main, err := os.ReadFile(filepath.Join(m[1], "mod", "main.go"))
	if err != nil || !regexp.MustCompile(`"plugd\.build/hello_[0-9a-z_]+/greet"`).Match(main) {
		t.Fatalf("main.go imports not rewritten: %v\n%s", err, main)
	}
	// The build module keeps the host module's language version.
	hostMod, _ := os.ReadFile(filepath.Join(repoRoot(t), "go.mod"))
	goLine := regexp.MustCompile(`(?m)^go \S+$`).Find(hostMod)
	buildMod, _ := os.ReadFile(filepath.Join(m[1], "mod", "go.mod"))
	if goLine == nil || !bytes.Contains(buildMod, append(goLine, '\n')) {
		t.Errorf("build go.mod does not keep %q:\n%s", goLine, buildMod)
	}
	if _, err := os.Stat(filepath.Join(m[1], "mod", "greet", "greet_test.go")); !os.IsNotExist(err) {
		t.Errorf("greet_test.go was copied into the build")
	}
}

// TestUsageErrors: bad invocations fail with a message.
func TestUsageErrors(t *testing.T) {
	_, host := tools(t)
	for _, args := range [][]string{
		{},
		{"check"},
		{"-host", host, "-src", repoRoot(t), "-o", t.TempDir(), filepath.Join(t.TempDir(), "missing")},
		{"-host", filepath.Join(t.TempDir(), "nohost"), "-src", repoRoot(t), "x"},
		{"-host", host, "-src", t.TempDir(), "x"},
		{"-host", host, "-src", repoRoot(t), "-o", t.TempDir(), repoRoot(t)},
	} {
		r := pcompile(t, t.TempDir(), args...)
		if r.code == 0 || strings.TrimSpace(r.stderr) == "" || r.stdout != "" {
			t.Errorf("pcompile %q: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

// TestHostFromOtherSDKSource: a host binary whose SDK package differs from
// the source tree's (here: its fingerprint bytes patched, as if sdk/ had
// been edited after the host was built) is caught, although its build info
// is identical: `pcompile check` reports the package, and a build is
// refused and leaves no file.
func TestHostFromOtherSDKSource(t *testing.T) {
	_, host := tools(t)
	dir := t.TempDir()
	good, _, _ := build(t, dir, filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))

	hashes, err := compat.PackageHashes(host)
	if err != nil {
		t.Fatal(err)
	}
	h, ok := hashes["github.com/plugd/plugd/sdk"]
	if !ok {
		t.Fatalf("the host has no fingerprint for the SDK (%d packages)", len(hashes))
	}
	raw, _ := hex.DecodeString(h)
	flipped := make([]byte, len(raw))
	for i, c := range raw {
		flipped[i] = ^c
	}
	patched := patchHost(t, string(raw), string(flipped))

	r := pcompile(t, t.TempDir(), "check", "-host", patched, good)
	if r.code != 1 || !strings.Contains(r.stdout, "[KO] package github.com/plugd/plugd/sdk: host has "+hex.EncodeToString(flipped)) ||
		!strings.Contains(r.stdout, "[OK] -trimpath") {
		t.Errorf("check: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	out := filepath.Join(t.TempDir(), "plugins")
	r = pcompile(t, t.TempDir(), "-host", patched, "-src", repoRoot(t), "-o", out, filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"))
	if r.code != 1 || !strings.Contains(r.stderr, "package github.com/plugd/plugd/sdk") || !strings.Contains(r.stderr, "differently from the host") {
		t.Errorf("build: exit %d\n%s", r.code, r.stderr)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a refused build left %d files in the output dir", len(entries))
	}
}

// TestCompileErrorNamesSourceFile: a compile error points at the plugin's
// own file, not at the temporary copy.
func TestCompileErrorNamesSourceFile(t *testing.T) {
	_, host := tools(t)
	mod := filepath.Join(t.TempDir(), "broken")
	copyDir(t, filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"), mod)
	os.Remove(filepath.Join(mod, "greet", "greet_test.go"))
	edit(t, filepath.Join(mod, "main.go"), "github.com/plugd/plugd/pcompile/testdata/hello/greet", "example.com/broken/greet")
	edit(t, filepath.Join(mod, "greet", "greet.go"), `return "greet-1"`, `return undefinedThing`)
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/broken\n\ngo 1.26\n"), 0o644)
	out := t.TempDir()
	r := pcompile(t, t.TempDir(), "-host", host, "-src", repoRoot(t), "-o", out, mod)
	want := filepath.Join(mod, "greet", "greet.go") + ":10:9: undefined: undefinedThing"
	if r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "# example.com/broken/greet") {
		t.Fatalf("exit %d, want 1 and %q in:\n%s", r.code, want, r.stderr)
	}
	if entries, _ := os.ReadDir(out); len(entries) != 0 {
		t.Errorf("a failed build left %d files in the output dir", len(entries))
	}
}

// TestInterruptCleansUp: SIGTERM during a build stops go and the tools it
// runs, removes the temporary build dir and the partial output, and exits 1.
// The C compiler is replaced by a script that records its pid and blocks,
// so the signal lands while the build is running.
func TestInterruptCleansUp(t *testing.T) {
	pc, host := tools(t)
	dir := t.TempDir()
	mod := filepath.Join(dir, "slow")
	copyDir(t, filepath.Join(repoRoot(t), "pcompile", "testdata", "hello"), mod)
	edit(t, filepath.Join(mod, "main.go"), "github.com/plugd/plugd/pcompile/testdata/hello/greet", "example.com/slow/greet")
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module example.com/slow\n\ngo 1.26\n"), 0o644)
	os.WriteFile(filepath.Join(mod, "cgo.go"), []byte("package main\n\n// static int two(void) { return 2; }\nimport \"C\"\n\nvar _ = C.two()\n"), 0o644)
	pidFile := filepath.Join(dir, "cc.pid")
	cc := filepath.Join(dir, "cc.sh")
	os.WriteFile(cc, []byte("#!/bin/sh\necho $$ >> "+pidFile+"\nexec sleep 60\n"), 0o755)

	tmp, out := t.TempDir(), t.TempDir()
	cmd := exec.Command(pc, "-host", host, "-src", repoRoot(t), "-o", out, mod)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "CC="+cc)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && len(b) > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("pcompile ended before the C compiler ran: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the C compiler was not run within 90s\n%s", stderr.String())
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "interrupted") {
			t.Errorf("pcompile after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("pcompile did not stop within 30s of SIGTERM\n%s", stderr.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("temporary build dir left behind: %s", left[0].Name())
	}
	if left, _ := os.ReadDir(out); len(left) != 0 {
		t.Errorf("output left behind: %s", left[0].Name())
	}
	// The blocked compiler was stopped with go's process group.
	pids, _ := os.ReadFile(pidFile)
	for _, pid := range strings.Fields(string(pids)) {
		for i := 0; ; i++ {
			if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
				break
			}
			if i == 100 {
				t.Errorf("C compiler process %s still running", pid)
				syscall.Kill(atoi(pid), syscall.SIGKILL)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}
