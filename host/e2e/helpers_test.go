// Package e2e drives the real plugd binary and real plugins built by
// pcompile over HTTP. The plugin under test is testdata/echo, copied and
// edited per build.
package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/internal/testhost"
)

// echoSource copies testdata/echo into a temp dir, applying edits (old →
// new, each must match) to main.go and writing extra files.
func echoSource(t *testing.T, edits map[string]string, replyPrefix string, extra map[string]string) string {
	t.Helper()
	dst := t.TempDir()
	src := filepath.Join(testhost.RepoRoot(t), "host", "e2e", "testdata", "echo")
	if out, err := exec.Command("cp", "-r", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	main := filepath.Join(dst, "main.go")
	raw, _ := os.ReadFile(main)
	s := string(raw)
	for old, repl := range edits {
		if !strings.Contains(s, old) {
			t.Fatalf("edit %q does not match testdata/echo/main.go", old)
		}
		s = strings.Replace(s, old, repl, 1)
	}
	os.WriteFile(main, []byte(s), 0o644)
	if replyPrefix != "" {
		p := filepath.Join(dst, "reply", "reply.go")
		raw, _ := os.ReadFile(p)
		os.WriteFile(p, []byte(strings.Replace(string(raw), `build + ":" + s`, `build + ":`+replyPrefix+`" + s`, 1)), 0o644)
	}
	for name, body := range extra {
		os.WriteFile(filepath.Join(dst, name), []byte(body), 0o644)
	}
	return dst
}

// buildEcho compiles an echo variant whose build constant is build.
func buildEcho(t *testing.T, h *testhost.Host, build string) string {
	t.Helper()
	return h.Compile(t, echoSource(t, map[string]string{`const build = "build-1"`: `const build = "` + build + `"`}, "", nil))
}

func eventually(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}
