package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plugd/plugd/internal/testhost"
)

// TestBootstrapAdmin: a host whose config has no appbuild users gets the
// bootstrap user admin, with its password in a 0600 file in the plugin's
// data dir, unchanged across a swap and a restart.
func TestBootstrapAdmin(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	so := h.Compile(t, "plugins/appbuild")
	h.LoadAPI(t, "appbuild.v1", so)
	path := filepath.Join(h.DataDir, "plugins", "appbuild", "initial-admin-password")

	status := func(user, pass string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", h.URL+"/appbuild/v1/api/app", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	check := func(when, wantPW string) string {
		t.Helper()
		st, err := os.Stat(path)
		if err != nil {
			t.Fatalf("%s: password file: %v", when, err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: password file mode %v, want 0600", when, st.Mode().Perm())
		}
		raw, _ := os.ReadFile(path)
		pw := strings.TrimSpace(string(raw))
		if len(pw) < 20 || strings.ContainsAny(pw, " \n") {
			t.Fatalf("%s: password %q", when, pw)
		}
		if wantPW != "" && pw != wantPW {
			t.Fatalf("%s: password changed", when)
		}
		if got := status("admin", pw); got != 200 {
			t.Fatalf("%s: admin with the bootstrap password: %d", when, got)
		}
		for _, c := range [][2]string{{"admin", pw + "x"}, {"admin", "guessme"}, {"root", pw}, {"", ""}} {
			if got := status(c[0], c[1]); got != 401 {
				t.Fatalf("%s: %q: %d, want 401", when, c[0], got)
			}
		}
		log := h.Log()
		if !strings.Contains(log, path) || strings.Contains(log, pw) {
			t.Fatalf("%s: the host log must name %s and never show the password", when, path)
		}
		return pw
	}
	pw := check("first start", "")

	so2 := h.Compile(t, "plugins/appbuild")
	if so2 == so {
		t.Fatalf("pcompile reused the file name %s", so)
	}
	h.LoadAPI(t, "appbuild.v1", so2)
	check("after a swap", pw)

	h.Restart(t)
	check("after a restart", pw)
}
