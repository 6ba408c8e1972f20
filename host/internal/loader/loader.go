// Package loader turns a file name from the management API into a plugin
// declaration, refusing anything unsafe on the way. The order matters:
// cheap checks first, and the in-process plugin.Open last, because a failed
// open can leave the process unable to load anything again (GO-PLUGINS.md).
//
//  1. the name is a plain *.so file inside the plugins dir (400 otherwise);
//  2. its build info matches the host's, and so do the fingerprints of the
//     packages it shares with the host (422 naming each mismatch);
//  3. a child process (`plugd check -json FILE`) opens it first (422 with
//     the child's reason if it fails, panics, crashes or hangs);
//  4. plugin.Open in-process under recover, Lookup, ABI check.
package loader

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"plugin"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plugd/plugd/internal/compat"
	"github.com/plugd/plugd/sdk"
)

// Loader loads plugin files from one directory.
type Loader struct {
	Dir          string        // the plugins dir
	Exe          string        // this binary, run as `Exe check -json FILE`
	CheckTimeout time.Duration // bound on the child's trial load
	Host         *debug.BuildInfo

	mu     sync.Mutex
	opened map[string]openedFile // by absolute path

	hashesOnce sync.Once
	hashes     map[string]string // this binary's package fingerprints
}

type openedFile struct {
	id   fileID
	decl *sdk.Declaration
}

// fileID identifies a file's content cheaply: plugin.Open caches by path,
// so a path whose file was replaced must not be opened again.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

// Resolve checks that name is a plain name of a regular .so file directly in
// the plugins dir and returns its absolute path.
func (l *Loader) Resolve(name string) (string, error) {
	switch {
	case name == "":
		return "", sdk.Errorf(http.StatusBadRequest, "missing ?file=<name>.so")
	case strings.ContainsAny(name, `/\`) || name == "." || name == ".." || strings.Contains(name, ".."):
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: must be a plain file name inside the plugins dir (no paths, no ..)", name)
	case !strings.HasSuffix(name, ".so"):
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: must end in .so", name)
	case strings.HasPrefix(name, "."):
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: hidden files are not loaded (pcompile writes them while building)", name)
	}
	dir, err := filepath.Abs(l.Dir)
	if err != nil {
		return "", err
	}
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("plugins dir %s: %w", l.Dir, err)
	}
	path := filepath.Join(dir, name)
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if os.IsNotExist(err) {
			return "", sdk.Errorf(http.StatusNotFound, "file %q not found in the plugins dir %s", name, l.Dir)
		}
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: %v", name, err)
	}
	if filepath.Dir(real) != dir {
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: symlink leads outside the plugins dir", name)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: %v", name, err)
	}
	if !fi.Mode().IsRegular() {
		return "", sdk.Errorf(http.StatusBadRequest, "file %q: not a regular file", name)
	}
	return real, nil
}

// Load runs every check on the file called name and returns its declaration.
func (l *Loader) Load(ctx context.Context, name string) (*sdk.Declaration, error) {
	path, err := l.Resolve(name)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock() // one plugin.Open at a time
	id, err := statID(path)
	if err != nil {
		return nil, err
	}
	if o, ok := l.opened[path]; ok {
		if o.id == id {
			return o.decl, nil // already open in this process: same plugin
		}
		return nil, sdk.Errorf(http.StatusConflict, "file %q was replaced after it was loaded; Go caches plugins by path, so a new build needs a new file name (pcompile makes one)", name)
	}
	if err := l.checkBuild(path, name); err != nil {
		return nil, err
	}
	if err := l.checkPackages(path, name); err != nil {
		return nil, err
	}
	if err := l.trial(ctx, path, name); err != nil {
		return nil, err
	}
	decl, err := Open(path)
	if err != nil {
		return nil, sdk.Errorf(http.StatusUnprocessableEntity, "file %q: %v", name, err)
	}
	if l.opened == nil {
		l.opened = map[string]openedFile{}
	}
	l.opened[path] = openedFile{id: id, decl: decl}
	return decl, nil
}

func (l *Loader) checkBuild(path, name string) error {
	mm, err := compat.CheckFile(path, l.Host)
	if err != nil {
		return sdk.Errorf(http.StatusUnprocessableEntity, "file %q: %v", name, err)
	}
	return refuse(name, mm, len(mm))
}

// refuse is the 422 for mm, naming at most the first most mismatches.
func refuse(name string, mm []compat.Mismatch, most int) error {
	if len(mm) == 0 {
		return nil
	}
	var lines []string
	for i, m := range mm {
		if i == most {
			lines = append(lines, fmt.Sprintf("and %d more", len(mm)-most))
			break
		}
		lines = append(lines, m.String())
	}
	return sdk.Errorf(http.StatusUnprocessableEntity, "file %q was not built for this host (rebuild it with pcompile): %s", name, strings.Join(lines, "; "))
}

// checkPackages compares the fingerprints plugin.Open would compare, without
// opening anything. Build info cannot tell two builds of the host's own
// module apart (both are "(devel)"), so a plugin built from an edited SDK
// tree passes checkBuild; this names the package and the fix. When the
// fingerprints cannot be read, the trial load still catches the mismatch.
func (l *Loader) checkPackages(path, name string) error {
	l.hashesOnce.Do(func() {
		h, err := compat.PackageHashes(l.Exe)
		if err != nil {
			return
		}
		l.hashes = h
	})
	if len(l.hashes) == 0 {
		return nil
	}
	mm, _, err := compat.ComparePackageHashes(l.hashes, path)
	if err != nil {
		return sdk.Errorf(http.StatusUnprocessableEntity, "file %q: %v", name, err)
	}
	return refuse(name, mm, 3) // a changed SDK changes every package above it too
}

// Open opens a plugin file in this process, recovering a panic in its init,
// and returns its checked declaration. `plugd check` calls it in the child.
func Open(path string) (decl *sdk.Declaration, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("plugin init panicked: %v", p)
		}
	}()
	p, err := plugin.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open: %v", err)
	}
	sym, err := p.Lookup(sdk.SymbolName)
	if err != nil {
		return nil, fmt.Errorf("no exported %s symbol: declare `var %s = sdk.Declaration{...}` in the plugin's main package", sdk.SymbolName, sdk.SymbolName)
	}
	d, ok := sym.(*sdk.Declaration)
	if !ok {
		return nil, fmt.Errorf("symbol %s is a %T, want sdk.Declaration", sdk.SymbolName, sym)
	}
	return d, Validate(d)
}

// Validate checks a declaration's fields.
func Validate(d *sdk.Declaration) error {
	switch {
	case d.ABI != sdk.ABIVersion:
		return fmt.Errorf("plugin ABI version %d, host speaks %d: rebuild it against this host's SDK", d.ABI, sdk.ABIVersion)
	case !ValidName(d.Name):
		return fmt.Errorf("plugin name %q: want ^[a-z][a-z0-9_]*$", d.Name)
	case !ValidVersion(d.Version):
		return fmt.Errorf("plugin version %q: want v1, v2, ...", d.Version)
	case d.NewAPI == nil && d.NewSLP == nil:
		return fmt.Errorf("plugin %s declares neither NewAPI nor NewSLP", d.Name)
	}
	return nil
}

// ValidName reports whether s is a plugin or SLP name.
func ValidName(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ValidVersion reports whether s is v1, v2, ... (no leading zero).
func ValidVersion(s string) bool {
	if len(s) < 2 || s[0] != 'v' || s[1] < '1' || s[1] > '9' {
		return false
	}
	for _, c := range s[2:] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func statID(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), st.Ino
	}
	return id, nil
}
