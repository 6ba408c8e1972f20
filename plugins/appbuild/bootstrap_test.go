package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/plugd/plugd/sdk/sdktest"
)

func statusAs(t *testing.T, url, user, pass string) int {
	t.Helper()
	r, _ := http.NewRequest("GET", url+"/api/app", nil)
	r.SetBasicAuth(user, pass)
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestBootstrapUser(t *testing.T) {
	h := sdktest.NewHost(t, "appbuild.v1")
	p1, url1 := startInstance(t, h, nil)
	path := filepath.Join(h.DataDir(), bootstrapFile)
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("password file: %v %v", st, err)
	}
	raw, _ := os.ReadFile(path)
	pw := strings.TrimSpace(string(raw))
	if len(pw) < 20 {
		t.Fatalf("password %q is too short", pw)
	}
	if got := statusAs(t, url1, "admin", pw); got != 200 {
		t.Fatalf("bootstrap password: %d", got)
	}
	if got := statusAs(t, url1, "admin", pw+"x"); got != 401 {
		t.Fatalf("wrong password: %d", got)
	}
	if err := p1.Health(context.Background()); err != nil {
		t.Fatalf("health with the bootstrap user: %v", err)
	}
	// Only the hash is stored.
	kvs, _ := h.Store().List(context.Background(), "")
	for _, kv := range kvs {
		if strings.Contains(string(kv.Value), pw) {
			t.Fatalf("password stored in the clear under %s", kv.Key)
		}
	}
	// A second instance (a swap) keeps the same password and file.
	_, url2 := startInstance(t, h, nil)
	if raw2, _ := os.ReadFile(path); string(raw2) != string(raw) {
		t.Fatalf("password file changed by a swap: %q -> %q", raw, raw2)
	}
	if got := statusAs(t, url2, "admin", pw); got != 200 {
		t.Fatalf("bootstrap password after a swap: %d", got)
	}
	// Configured users replace it: the file goes, the password stops working.
	h.ConfigYAML = "users:\n  - name: alice\n    password_bcrypt: \"" + hashOf(t, "s3cret") + "\"\n"
	_, url3 := startInstance(t, h, nil)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("password file left after users were configured: %v", err)
	}
	if got := statusAs(t, url3, "admin", pw); got != 401 {
		t.Fatalf("bootstrap password with configured users: %d", got)
	}
	if got := statusAs(t, url3, "alice", "s3cret"); got != 200 {
		t.Fatalf("configured user: %d", got)
	}
	// Without users again, a new bootstrap password is made.
	h.ConfigYAML = ""
	_, url4 := startInstance(t, h, nil)
	raw4, err := os.ReadFile(path)
	if err != nil || string(raw4) == string(raw) {
		t.Fatalf("new bootstrap password: %q %v", raw4, err)
	}
	if got := statusAs(t, url4, "admin", strings.TrimSpace(string(raw4))); got != 200 {
		t.Fatalf("new bootstrap password: %d", got)
	}
}

func TestCreatePasswordFileExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), bootstrapFile)
	const n = 8
	got := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw, err := createPasswordFile(path)
			if err != nil {
				t.Error(err)
			}
			got[i] = pw
		}()
	}
	wg.Wait()
	for i := range got {
		if got[i] == "" || got[i] != got[0] {
			t.Fatalf("concurrent creators disagree: %q", got)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("temp files left: %v", ents)
	}
	os.WriteFile(path, nil, 0o600)
	if _, err := createPasswordFile(path); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty password file: %v", err)
	}
}
