package main

import (
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
)

func TestRewriteImports(t *testing.T) {
	const old = "github.com/plugd/plugd/plugins/hello"
	src := `// Package main mentions "github.com/plugd/plugd/plugins/hello/x" in a comment.
package main

import "github.com/plugd/plugd/plugins/hello/single"

import (
	"fmt"
	g "github.com/plugd/plugd/plugins/hello/greet"  // aliased
	. "github.com/plugd/plugd/plugins/hello/dot"
	_ "github.com/plugd/plugd/plugins/hello/deep/er/pkg"
	other "github.com/plugd/plugd/plugins/hello2/lib"
	"github.com/plugd/plugd/sdk"
	self "github.com/plugd/plugd/plugins/hello"
	raw ` + "`github.com/plugd/plugd/plugins/hello/raw`" + `
)

var s = "github.com/plugd/plugd/plugins/hello/notanimport"
`
	out, n, imports, err := rewriteImports("x.go", []byte(src), old, "plugd.build/hello_1")
	if err != nil {
		t.Fatal(err)
	}
	if n != 6 {
		t.Errorf("rewrote %d imports, want 6", n)
	}
	want := strings.NewReplacer(
		`"github.com/plugd/plugd/plugins/hello/single"`, `"plugd.build/hello_1/single"`,
		`"github.com/plugd/plugd/plugins/hello/greet"`, `"plugd.build/hello_1/greet"`,
		`"github.com/plugd/plugd/plugins/hello/dot"`, `"plugd.build/hello_1/dot"`,
		`"github.com/plugd/plugd/plugins/hello/deep/er/pkg"`, `"plugd.build/hello_1/deep/er/pkg"`,
		`self "github.com/plugd/plugd/plugins/hello"`, `self "plugd.build/hello_1"`,
		"`github.com/plugd/plugd/plugins/hello/raw`", `"plugd.build/hello_1/raw"`,
	).Replace(src)
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	// Untouched: comments, strings, a sibling with the same prefix, the SDK.
	for _, keep := range []string{
		`mentions "github.com/plugd/plugd/plugins/hello/x"`,
		`"github.com/plugd/plugd/plugins/hello/notanimport"`,
		`"github.com/plugd/plugd/plugins/hello2/lib"`,
		`"github.com/plugd/plugd/sdk"`,
	} {
		if !strings.Contains(string(out), keep) {
			t.Errorf("%s was changed", keep)
		}
	}

	if len(imports) != 9 || imports[0] != "plugd.build/hello_1/single" || imports[1] != "fmt" {
		t.Errorf("imports after rewriting: %q", imports)
	}

	same, n, _, err := rewriteImports("y.go", []byte("package y\n\nimport \"fmt\"\n"), old, "x")
	if err != nil || n != 0 || string(same) != "package y\n\nimport \"fmt\"\n" {
		t.Errorf("file without own imports changed: %q %d %v", same, n, err)
	}
	if _, _, _, err := rewriteImports("bad.go", []byte("package ; import"), old, "x"); err == nil || !strings.Contains(err.Error(), "bad.go") {
		t.Errorf("unparsable file: want an error naming it, got %v", err)
	}
}

func TestCopyTreeSkips(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "out")
	files := map[string]string{
		"main.go":              "package main\n\nimport \"example.com/p/sub\"\n\nvar _ = sub.X\n",
		"sub/sub.go":           "package sub\n\nconst X = 1\n",
		"sub/sub_test.go":      "package sub\nbroken",
		"sub/data.txt":         "embedded data\n",
		"testdata/broken.go":   "broken",
		".hidden.go":           "broken",
		".git/config":          "x",
		"sub/.editor.swp":      "x",
		"nested/go.mod":        "module other\n",
		"nested/n.go":          "broken",
		"go.mod":               "module example.com/p\n",
		"go.sum":               "",
		"_underscore/u.go":     "package u\n",
		"deep/er/pkg/pkg.go":   "package pkg\n\nimport _ \"example.com/p/sub\"\n",
		"deep/er/pkg/pkg_x.s":  "// asm\n",
		"deep/er/testdata/t.x": "x",
	}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, err := copyTree(src, dst, "example.com/p", "plugd.build/p_1")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("rewrote %d imports, want 2", n)
	}
	var got []string
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dst, p)
			got = append(got, filepath.ToSlash(rel))
		}
		return err
	})
	slices.Sort(got)
	want := []string{"_underscore/u.go", "deep/er/pkg/pkg.go", "deep/er/pkg/pkg_x.s", "main.go", "sub/data.txt", "sub/sub.go"}
	if !slices.Equal(got, want) {
		t.Errorf("copied %v\nwant %v", got, want)
	}
	main, _ := os.ReadFile(filepath.Join(dst, "main.go"))
	if !strings.Contains(string(main), `import "plugd.build/p_1/sub"`) {
		t.Errorf("import not rewritten:\n%s", main)
	}
}

func TestBuildIDAndName(t *testing.T) {
	seen := map[string]bool{}
	re := regexp.MustCompile(`^[0-9a-z]+-[0-9a-f]{12}$`)
	for i := 0; i < 2000; i++ {
		id := newBuildID()
		if seen[id] {
			t.Fatalf("build id %s repeated", id)
		}
		if !re.MatchString(id) {
			t.Fatalf("build id %q has an unexpected form", id)
		}
		seen[id] = true
	}
	for dir, want := range map[string]string{
		"plugins/gateway": "gateway", "/x/My-Plugin.v2": "my_plugin_v2", "/x/---": "plugin", "hello_2": "hello_2",
	} {
		if got := pluginName(dir); got != want {
			t.Errorf("pluginName(%q) = %q, want %q", dir, got, want)
		}
	}
}

func TestToolchainMatch(t *testing.T) {
	if v, err := toolchainMatch("go1.26.8", "go1.26.8", "bin/plugd"); err != nil || v != "go1.26.8" {
		t.Errorf("same toolchain refused: %v", err)
	}
	if _, err := toolchainMatch("go1.26.8", "go1.26.8 X:nocoverageredesign", "bin/plugd"); err != nil {
		t.Errorf("experiment suffix not ignored: %v", err)
	}
	_, err := toolchainMatch("go1.26.7", "go1.26.8", "bin/plugd")
	if err == nil {
		t.Fatal("a different toolchain was accepted")
	}
	for _, want := range []string{"go1.26.7", "go1.26.8", "GOTOOLCHAIN=go1.26.8", "bin/plugd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not name %q", err, want)
		}
	}
}

func TestBuildSettings(t *testing.T) {
	bi := &debug.BuildInfo{Settings: []debug.BuildSetting{
		{Key: "-buildmode", Value: "exe"}, {Key: "-trimpath", Value: "true"}, {Key: "-race", Value: "true"},
		{Key: "-gcflags", Value: "all=-N -l"}, {Key: "-tags", Value: "netgo,osusergo"}, {Key: "-ldflags", Value: "-s -w"},
		{Key: "CGO_ENABLED", Value: "1"}, {Key: "CGO_CFLAGS", Value: "-O2 -g"}, {Key: "GOOS", Value: "linux"},
		{Key: "GOARCH", Value: "amd64"}, {Key: "GOAMD64", Value: "v3"}, {Key: "GOEXPERIMENT", Value: "greenteagc"},
	}}
	flags, env := buildSettings(bi)
	wantFlags := []string{"-buildmode=plugin", "-buildvcs=false", "-trimpath", "-race", "-gcflags=all=-N -l", "-tags=netgo,osusergo"}
	if !slices.Equal(flags, wantFlags) {
		t.Errorf("flags %q\nwant  %q", flags, wantFlags)
	}
	for _, want := range []string{"CGO_ENABLED=1", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v3", "GOEXPERIMENT=greenteagc", "CGO_CFLAGS=-O2 -g", "GOFLAGS="} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}
	_, env = buildSettings(&debug.BuildInfo{})
	if !slices.Contains(env, "GOEXPERIMENT=") {
		t.Errorf("GOEXPERIMENT must be cleared when the host has none: %q", env)
	}
}

func TestBuildGoMod(t *testing.T) {
	mf := &goModFile{}
	mf.Module.Path = "example.com/ext"
	mf.Require = append(mf.Require,
		struct {
			Path     string
			Version  string
			Indirect bool
		}{hostModule, "v0.0.0-00010101000000-000000000000", false},
		struct {
			Path     string
			Version  string
			Indirect bool
		}{"github.com/sirupsen/logrus", "v1.9.3", false},
		struct {
			Path     string
			Version  string
			Indirect bool
		}{"golang.org/x/sys", "v0.1.0", true})
	var r struct {
		Old struct{ Path, Version string }
		New struct{ Path, Version string }
	}
	r.Old.Path, r.New.Path = hostModule, "../.."
	mf.Replace = append(mf.Replace, r)
	r.Old.Path, r.New.Path = "example.com/lib", "./lib"
	mf.Replace = append(mf.Replace, r)
	r.Old.Path, r.Old.Version, r.New.Path, r.New.Version = "example.com/a", "v1.0.0", "example.com/b", "v1.2.0"
	mf.Replace = append(mf.Replace, r)
	got := string(buildGoMod("plugd.build/ext_1", "1.26.8", mf, "/src/ext"))
	for _, want := range []string{
		"module plugd.build/ext_1\n", "go 1.26.8\n", "\tgithub.com/sirupsen/logrus v1.9.3\n",
		"\tgolang.org/x/sys v0.1.0 // indirect\n", "replace example.com/lib => /src/ext/lib\n",
		"replace example.com/a v1.0.0 => example.com/b v1.2.0\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("go.mod lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, hostModule) {
		t.Errorf("the host module must come from the workspace only:\n%s", got)
	}
}

func TestForbiddenImports(t *testing.T) {
	for _, p := range []string{"github.com/plugd/plugd/host", "github.com/plugd/plugd/host/internal/loader", "github.com/plugd/plugd/plugins/gateway/lb"} {
		if err := forbiddenImport([]string{"fmt", p}); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v", p, err)
		}
	}
	if err := forbiddenImport([]string{"github.com/plugd/plugd/sdk", "github.com/plugd/plugd/hostile", "plugd.build/x_1/lb"}); err != nil {
		t.Error(err)
	}
	// Through copyTree: a plugin importing another plugin is refused with
	// the file named; its own imports are fine.
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nimport _ \"github.com/plugd/plugd/plugins/a/x\"\nimport _ \"github.com/plugd/plugd/plugins/b\"\n"), 0o644)
	_, err := copyTree(src, t.TempDir(), "github.com/plugd/plugd/plugins/a", "plugd.build/a_1")
	if err == nil || !strings.Contains(err.Error(), "main.go") || !strings.Contains(err.Error(), "github.com/plugd/plugd/plugins/b") {
		t.Errorf("got %v", err)
	}
}

func TestMapBuildOutput(t *testing.T) {
	src := &source{copyRoot: "/home/me/hello", oldPrefix: "example.com/hello"}
	out := "# plugd.build/hello_x_1/greet\ngreet/greet.go:10:9: undefined: y\n# plugd.build/hello_x_1\n./main.go:23:20: undefined: nope\n" +
		"/tmp/pcompile-hello-1/mod/sub/a.go:1:1: bad\n/usr/local/go/src/fmt/print.go:3: other\n"
	got := mapBuildOutput(out, "/tmp/pcompile-hello-1/mod", "plugd.build/hello_x_1", src)
	want := "# example.com/hello/greet\n/home/me/hello/greet/greet.go:10:9: undefined: y\n# example.com/hello\n/home/me/hello/main.go:23:20: undefined: nope\n" +
		"/home/me/hello/sub/a.go:1:1: bad\n/usr/local/go/src/fmt/print.go:3: other"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
