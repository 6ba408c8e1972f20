package main

import (
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// skipEntry reports whether copyTree leaves a file or directory out of a
// build: dot-files, testdata/, *_test.go, and nested modules.
func skipEntry(path string, d fs.DirEntry) bool {
	name := d.Name()
	if strings.HasPrefix(name, ".") {
		return true
	}
	if d.IsDir() {
		if name == "testdata" {
			return true
		}
		if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
			return true // another module: not part of this plugin
		}
		return false
	}
	return strings.HasSuffix(name, "_test.go")
}

// copyTree copies the plugin tree src to dst, rewriting in every .go file
// the imports of oldPrefix (and of its subpackages) to newPrefix. go.mod and
// go.sum at the root are not copied: the caller writes the build module's
// own. It returns the number of rewritten import specs.
func copyTree(src, dst, oldPrefix, newPrefix string) (int, error) {
	rewritten := 0
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if rel == "." {
			return os.MkdirAll(target, 0o755)
		}
		if skipEntry(path, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if rel == "go.mod" || rel == "go.sum" || rel == "go.work" || rel == "go.work.sum" {
			return nil
		}
		info, err := os.Stat(path) // follows a symlink to a file
		if err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, ".go") {
			var n int
			var imports []string
			data, n, imports, err = rewriteImports(path, data, oldPrefix, newPrefix)
			if err != nil {
				return err
			}
			if err := forbiddenImport(imports); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			rewritten += n
		}
		return os.WriteFile(target, data, 0o644)
	})
	return rewritten, err
}

// rewriteImports replaces, in one Go source file, every import path equal to
// oldPrefix or below it ("oldPrefix/...") by the same path under newPrefix.
// It edits the import specs at their parsed positions only, so the rest of
// the file (comments, strings, formatting) stays byte for byte the same.
//
// It also returns every import path of the file, after rewriting.
func rewriteImports(filename string, src []byte, oldPrefix, newPrefix string) ([]byte, int, []string, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filename, src, parser.ImportsOnly|parser.ParseComments)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("parse %s: %w", filename, err)
	}
	type edit struct {
		start, end int
		text       string
	}
	var edits []edit
	var imports []string
	for _, spec := range f.Imports {
		p, err := strconv.Unquote(spec.Path.Value)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("%s: bad import path %s", fset.Position(spec.Path.Pos()), spec.Path.Value)
		}
		var np string
		switch {
		case p == oldPrefix:
			np = newPrefix
		case strings.HasPrefix(p, oldPrefix+"/"):
			np = newPrefix + p[len(oldPrefix):]
		default:
			imports = append(imports, p)
			continue
		}
		imports = append(imports, np)
		edits = append(edits, edit{
			start: fset.Position(spec.Path.Pos()).Offset,
			end:   fset.Position(spec.Path.End()).Offset,
			text:  strconv.Quote(np),
		})
	}
	if len(edits) == 0 {
		return src, 0, imports, nil
	}
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	out := make([]byte, 0, len(src)+len(edits)*len(newPrefix))
	last := 0
	for _, e := range edits {
		out = append(out, src[last:e.start]...)
		out = append(out, e.text...)
		last = e.end
	}
	out = append(out, src[last:]...)
	return out, len(edits), imports, nil
}

// forbiddenImport refuses imports of the host and of other plugins: they
// would be compiled under their original path into every build (and clash
// between builds), and plugins must meet only through the SDK.
func forbiddenImport(imports []string) error {
	for _, p := range imports {
		for _, bad := range []string{hostModule + "/host", hostModule + "/plugins"} {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				return fmt.Errorf("imports %s: a plugin must not import host/ or another plugin (plugins meet through the SDK: store, services, SLP sessions)", p)
			}
		}
	}
	return nil
}
