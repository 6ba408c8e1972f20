package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/plugd/plugd/internal/compat"
)

// buildModulePrefix is the module path prefix of every per-build module:
// plugd.build/<name>_<buildid>.
const buildModulePrefix = "plugd.build/"

// builder builds plugins that the host binary hostBin can load.
type builder struct {
	src      string           // the host's source tree (module github.com/plugd/plugd)
	hostBin  string           // the host binary whose build settings are copied
	host     *debug.BuildInfo // its build info
	outDir   string           // where .so files go, as given by -o
	keep     bool             // keep the temporary build dir
	verbose  bool             // go build -v: show compiled packages on stderr
	stderr   io.Writer
	goFlags  []string // go build flags derived from the host
	goEnv    []string // environment overrides derived from the host
	hostDeps map[string]*debug.Module
	srcGo    string          // the go line of the host source tree's go.mod
	ctx      context.Context // canceled on SIGINT/SIGTERM: go commands are stopped, temp files removed
}

// goCommand runs go in its own process group, so that an interrupted build
// stops go and every compiler or linker it started.
func (b *builder) goCommand(dir string, env []string, args ...string) *exec.Cmd {
	ctx := b.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// SIGINT: go then stops its tools and removes its work dir itself.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// newBuilder reads the host binary's build info and derives the build
// flags and environment that reproduce its settings.
func newBuilder(src, hostBin, outDir string, keep bool, stderr io.Writer) (*builder, error) {
	bi, err := compat.ReadFile(hostBin)
	if err != nil {
		return nil, fmt.Errorf("host binary: %w", err)
	}
	b := &builder{src: src, hostBin: hostBin, host: bi, outDir: outDir, keep: keep, stderr: stderr,
		hostDeps: map[string]*debug.Module{}}
	if bi.Main.Path != hostModule {
		return nil, fmt.Errorf("host binary %s was built from module %q, not from %s", hostBin, bi.Main.Path, hostModule)
	}
	if cgo := compat.Setting(bi, "CGO_ENABLED"); cgo != "1" {
		return nil, fmt.Errorf("host binary %s was built with CGO_ENABLED=%s: it cannot load plugins (plugin.Open answers \"plugin: not implemented\"); rebuild the host with CGO_ENABLED=1", hostBin, cgo)
	}
	if m := compat.Setting(bi, "-buildmode"); m == "plugin" {
		return nil, fmt.Errorf("%s is a plugin, not a host binary", hostBin)
	}
	for _, d := range bi.Deps {
		b.hostDeps[d.Path] = d
	}
	b.goFlags, b.goEnv = buildSettings(bi)
	mf, err := readGoMod(filepath.Join(src, "go.mod"), append(os.Environ(), b.goEnv...))
	if err != nil {
		return nil, err
	}
	b.srcGo = mf.Go
	return b, nil
}

// buildSettings turns the host's recorded build settings into go build
// flags and environment variables for the plugin build.
func buildSettings(bi *debug.BuildInfo) (flags, env []string) {
	flags = []string{"-buildmode=plugin", "-buildvcs=false"}
	for _, f := range []string{"-trimpath", "-race", "-asan", "-msan"} {
		if compat.Setting(bi, f) == "true" {
			flags = append(flags, f)
		}
	}
	for _, f := range []string{"-gcflags", "-tags"} {
		if v := compat.Setting(bi, f); v != "" {
			flags = append(flags, f+"="+v)
		}
	}
	env = []string{
		"CGO_ENABLED=1",
		"GOOS=" + compat.Setting(bi, "GOOS"),
		"GOARCH=" + compat.Setting(bi, "GOARCH"),
		// Always set: an empty value is the default set of experiments,
		// so a GOEXPERIMENT in pcompile's own environment cannot leak in.
		"GOEXPERIMENT=" + compat.Setting(bi, "GOEXPERIMENT"),
		// GOFLAGS could add -race, -mod or -trimpath behind our back.
		"GOFLAGS=",
	}
	for _, s := range bi.Settings {
		switch {
		case s.Key == "GOAMD64", s.Key == "GOARM", s.Key == "GOARM64", s.Key == "GO386",
			s.Key == "GOMIPS", s.Key == "GOMIPS64", s.Key == "GOPPC64", s.Key == "GORISCV64", s.Key == "GOWASM":
			env = append(env, s.Key+"="+s.Value)
		case strings.HasPrefix(s.Key, "CGO_") && s.Key != "CGO_ENABLED":
			// CGO_CFLAGS etc. go into runtime/cgo, which both share.
			env = append(env, s.Key+"="+s.Value)
		}
	}
	return flags, env
}

var nameClean = regexp.MustCompile(`[^a-z0-9_]+`)

// pluginName is the build name for a plugin directory: its base name,
// lower-cased, with anything outside [a-z0-9_] turned into "_".
func pluginName(dir string) string {
	n := nameClean.ReplaceAllString(strings.ToLower(filepath.Base(dir)), "_")
	n = strings.Trim(n, "_")
	if n == "" {
		n = "plugin"
	}
	return n
}

// newBuildID is unique per build: the time in base 36 and 6 random bytes.
func newBuildID() string {
	r := make([]byte, 6)
	if _, err := rand.Read(r); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + hex.EncodeToString(r)
}

// source describes what to copy for one plugin and how to rename it.
type source struct {
	copyRoot  string     // directory copied into the build module
	oldPrefix string     // import path of copyRoot in the original tree
	pkgRel    string     // the plugin's main package, relative to copyRoot
	ownMod    *goModFile // the plugin's own go.mod (nil for in-tree plugins)
}

// locate decides how a plugin directory is built: an in-tree plugin (inside
// a github.com/plugd/plugd tree) is copied alone and its imports under its
// own import path are rewritten; a plugin in its own module is copied with
// its whole module and every import of that module is rewritten.
func locate(dir string, env []string) (*source, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	root, mp, err := findModuleRoot(dir)
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return nil, err
	}
	rel = filepath.ToSlash(rel)
	if mp == hostModule {
		if rel == "." {
			return nil, fmt.Errorf("%s is the host's module root, not a plugin directory", dir)
		}
		return &source{copyRoot: dir, oldPrefix: mp + "/" + rel, pkgRel: "."}, nil
	}
	mf, err := readGoMod(filepath.Join(root, "go.mod"), env)
	if err != nil {
		return nil, err
	}
	return &source{copyRoot: root, oldPrefix: mp, pkgRel: rel, ownMod: mf}, nil
}

// result is one built plugin.
type result struct {
	Path     string        // printed path: -o joined with File
	File     string        // base name <name>-<buildid>.so
	Duration time.Duration // whole build, copy to rename
	BuildDir string        // kept temporary build dir, if -keep
}

// buildError is a build refused or failed for a reason pcompile explains.
type buildError struct{ msg string }

func (e *buildError) Error() string { return e.msg }

// build builds one plugin directory into a new .so in b.outDir.
func (b *builder) build(dir string) (res *result, err error) {
	start := time.Now()
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// Clipped, so that appending to it never writes into a shared array.
	baseEnv := slices.Clip(append(os.Environ(), b.goEnv...))
	src, err := locate(dir, baseEnv)
	if err != nil {
		return nil, err
	}
	name := pluginName(dir)
	id := newBuildID()
	modPath := buildModulePrefix + name + "_" + strings.ReplaceAll(id, "-", "_")
	pkg := modPath
	if src.pkgRel != "." {
		pkg += "/" + src.pkgRel
	}

	tmp, err := os.MkdirTemp("", "pcompile-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if b.keep {
			fmt.Fprintf(b.stderr, "pcompile: %s: build dir kept at %s\n", name, tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	modDir := filepath.Join(tmp, "mod")
	n, err := copyTree(src.copyRoot, modDir, src.oldPrefix, modPath)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", src.copyRoot, err)
	}
	if b.verbose {
		fmt.Fprintf(b.stderr, "pcompile: %s: %s copied as module %s (%d imports rewritten)\n", name, src.copyRoot, modPath, n)
	}

	// go's own work dir goes inside ours, so nothing outlives the build.
	gotmp := filepath.Join(tmp, "gotmp")
	if err := os.Mkdir(gotmp, 0o700); err != nil {
		return nil, err
	}
	env := append(baseEnv, "GOWORK="+filepath.Join(tmp, "go.work"), "GOTMPDIR="+gotmp)
	goVersion, err := b.checkToolchain(modDir, baseEnv)
	if err != nil {
		return nil, err
	}
	// The go.work line must cover every module: the toolchain's own version
	// does. The build module keeps the language version the plugin was
	// written for: its own go.mod's, or the host module's for an in-tree
	// plugin (loop variables, generics rules... must not change).
	workVersion := strings.TrimPrefix(goVersion, "go")
	langVersion := b.srcGo
	if src.ownMod != nil && src.ownMod.Go != "" {
		langVersion = src.ownMod.Go
	}
	if langVersion == "" {
		langVersion = workVersion
	}
	if err := os.WriteFile(filepath.Join(modDir, "go.mod"), buildGoMod(modPath, langVersion, src.ownMod, src.copyRoot), 0o644); err != nil {
		return nil, err
	}
	if src.ownMod != nil {
		if data, err := os.ReadFile(filepath.Join(src.copyRoot, "go.sum")); err == nil {
			if err := os.WriteFile(filepath.Join(modDir, "go.sum"), data, 0o644); err != nil {
				return nil, err
			}
		}
	}
	work := fmt.Sprintf("// Generated by pcompile for one build.\ngo %s\n\nuse (\n\t%s\n\t./mod\n)\n", workVersion, strconv.Quote(b.src))
	if err := os.WriteFile(filepath.Join(tmp, "go.work"), []byte(work), 0o644); err != nil {
		return nil, err
	}

	if err := b.checkBuildList(modDir, env); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(b.outDir, 0o755); err != nil {
		return nil, err
	}
	file := name + "-" + id + ".so"
	tmpOut, err := filepath.Abs(filepath.Join(b.outDir, "."+file+".tmp"))
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmpOut) // a no-op once renamed
	args := append([]string{"build"}, b.goFlags...)
	args = append(args, "-o", tmpOut, pkg)
	cmd := b.goCommand(modDir, env, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if b.ctx != nil && b.ctx.Err() != nil {
			return nil, errors.New("interrupted")
		}
		hint := "rerun with -keep to inspect the build module"
		if b.keep {
			hint = "build module in " + modDir
		}
		return nil, &buildError{fmt.Sprintf("go build failed (%v; %s):\n%s", err, hint,
			mapBuildOutput(out.String(), modDir, modPath, src))}
	}
	if b.verbose {
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			if l != "" {
				fmt.Fprintf(b.stderr, "pcompile: %s: compiled %s\n", name, l)
			}
		}
	}

	// Final check: what was built must pass the same comparison the host
	// makes before loading.
	ms, err := compat.CheckFile(tmpOut, b.host)
	if err != nil {
		return nil, fmt.Errorf("built file: %w", err)
	}
	if len(ms) > 0 {
		return nil, &buildError{"the built plugin does not match the host " + b.hostBin + ":\n  " + joinMismatches(ms, "\n  ")}
	}
	// And the check plugin.Open itself makes: the fingerprint of every
	// package both contain. It catches what build info cannot show, such as
	// a host binary built from an older SDK than the source tree's.
	ms, checked, err := compat.ComparePackages(b.hostBin, tmpOut)
	if err != nil {
		return nil, fmt.Errorf("package check: %w", err)
	}
	if len(ms) > 0 {
		return nil, &buildError{fmt.Sprintf("the built plugin compiles %d shared package(s) differently from the host %s "+
			"(was the host built from another version of %s?):\n  %s", len(ms), b.hostBin, b.src, summarize(ms, 5))}
	}
	if checked == 0 {
		fmt.Fprintf(b.stderr, "pcompile: warning: %s has no package fingerprints (does it import \"plugin\"?); only build info was compared\n", b.hostBin)
	}
	if b.ctx != nil && b.ctx.Err() != nil {
		return nil, errors.New("interrupted")
	}
	final := filepath.Join(b.outDir, file)
	if err := os.Rename(tmpOut, final); err != nil {
		return nil, err
	}
	res = &result{Path: final, File: file, Duration: time.Since(start)}
	if b.keep {
		res.BuildDir = tmp
	}
	return res, nil
}

// summarize lists the first n mismatches, one a line, and counts the rest.
func summarize(ms []compat.Mismatch, n int) string {
	var s []string
	for i, m := range ms {
		if i == n {
			s = append(s, fmt.Sprintf("... and %d more", len(ms)-n))
			break
		}
		m.Fix = ""
		s = append(s, m.String())
	}
	return strings.Join(s, "\n  ") + "\n  fix: " + ms[0].Fix
}

var fileRef = regexp.MustCompile(`(?m)^(\S+?\.(?:go|s|c|h)):(\d+)`)

// mapBuildOutput points go build's messages at the plugin's own files and
// import paths instead of the temporary copy.
func mapBuildOutput(out, modDir, modPath string, src *source) string {
	out = strings.ReplaceAll(out, modDir+string(filepath.Separator), src.copyRoot+string(filepath.Separator))
	out = strings.ReplaceAll(out, modPath, src.oldPrefix)
	out = fileRef.ReplaceAllStringFunc(out, func(ref string) string {
		m := fileRef.FindStringSubmatch(ref)
		if filepath.IsAbs(m[1]) {
			return ref
		}
		return filepath.Join(src.copyRoot, m[1]) + ":" + m[2]
	})
	return strings.TrimSpace(out)
}

func joinMismatches(ms []compat.Mismatch, sep string) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.String())
	}
	return strings.Join(s, sep)
}

// checkToolchain compares the go command's version (as it would run for the
// build, so GOTOOLCHAIN is honored) with the host's.
func (b *builder) checkToolchain(dir string, env []string) (string, error) {
	cmd := b.goCommand(dir, append(slices.Clip(env), "GOWORK=off"), "env", "GOVERSION")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return toolchainMatch(strings.TrimSpace(string(out)), b.host.GoVersion, b.hostBin)
}

// toolchainMatch returns the toolchain version or an error naming both
// versions and the fix.
func toolchainMatch(local, hostVersion, hostBin string) (string, error) {
	want, _, _ := strings.Cut(hostVersion, " ") // drop " X:experiments"
	if local != want {
		return "", &buildError{fmt.Sprintf(
			"toolchain mismatch: the host %s was built with %s, but the go command here is %s; "+
				"plugins must be built with exactly the host's toolchain: run GOTOOLCHAIN=%s pcompile ..., "+
				"or rebuild the host with %s", hostBin, want, local, want, local)}
	}
	return local, nil
}

// listedModule is the part of `go list -m -json` that pcompile uses.
type listedModule struct {
	Path    string
	Version string
	Main    bool
	Replace *listedModule
	Error   *struct{ Err string }
}

// checkBuildList computes the build list of the plugin's workspace and
// refuses any module that the host has at another version: the plugin would
// be built with a different version of packages the host has, and
// plugin.Open would refuse it.
func (b *builder) checkBuildList(modDir string, env []string) error {
	cmd := b.goCommand(modDir, env, "list", "-m", "-json", "all")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return &buildError{fmt.Sprintf("go list -m all (plugin workspace): %v\n%s", err, strings.TrimSpace(stderr.String()))}
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	var problems []string
	for {
		var m listedModule
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("go list -m -json all: %w", err)
		}
		if m.Main {
			continue
		}
		hd, ok := b.hostDeps[m.Path]
		if !ok {
			continue
		}
		hv := describe(hd.Path, hd.Version, hd.Replace != nil, replPath(hd), replVersion(hd))
		pv := m.Version
		if m.Replace != nil {
			pv = describe(m.Path, m.Version, true, m.Replace.Path, m.Replace.Version)
		}
		if hv != pv {
			problems = append(problems, fmt.Sprintf(
				"module %s: the host has %s, the plugin's build needs %s; fix: rebuild the host with `go get %s@%s`, "+
					"or make the plugin require %s@%s (a plugin may require an older version: the host's is then used)",
				m.Path, hv, pv, m.Path, m.Version, m.Path, hv))
		}
	}
	if len(problems) > 0 {
		return &buildError{"the plugin needs module versions that differ from the host's (" + b.hostBin + "):\n  " + strings.Join(problems, "\n  ")}
	}
	return nil
}

func replPath(m *debug.Module) string {
	if m.Replace == nil {
		return ""
	}
	return m.Replace.Path
}

func replVersion(m *debug.Module) string {
	if m.Replace == nil {
		return ""
	}
	return m.Replace.Version
}

// describe names the version of a module that is actually used: its own,
// a replacement's version (with the replacement's path if it differs), or a
// replacement directory.
func describe(path, version string, replaced bool, rPath, rVersion string) string {
	switch {
	case !replaced:
		return version
	case rVersion == "":
		return rPath
	case rPath != path:
		return rPath + " " + rVersion
	default:
		return rVersion
	}
}
