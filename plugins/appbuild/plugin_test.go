package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/appbuild/apkchannel"
	"github.com/plugd/plugd/plugins/appbuild/internal/procs"
	"github.com/plugd/plugd/sdk"
	"github.com/plugd/plugd/sdk/sdktest"
	"golang.org/x/crypto/bcrypt"
)

var (
	ksOnce sync.Once
	ksPath string
	ksErr  error
)

// keystore makes one throwaway signing key per test process.
func keystore(t *testing.T) string {
	ksOnce.Do(func() {
		for _, tool := range []string{"apksigner", "zipalign", "keytool", "zip"} {
			if _, err := exec.LookPath(tool); err != nil {
				ksErr = fmt.Errorf("%s not installed: run scripts/deps/appbuild.sh", tool)
				return
			}
		}
		dir, err := os.MkdirTemp("", "appbuild-ks-")
		if err != nil {
			ksErr = err
			return
		}
		ksPath = filepath.Join(dir, "k.jks")
		out, err := exec.Command("keytool", "-genkeypair", "-keystore", ksPath, "-storepass", "pass123",
			"-keypass", "pass123", "-alias", "k", "-keyalg", "RSA", "-keysize", "2048", "-validity", "10",
			"-dname", "CN=throwaway").CombinedOutput()
		if err != nil {
			ksErr = fmt.Errorf("keytool: %v\n%s", err, out)
		}
	})
	if ksErr != nil {
		t.Fatal(ksErr)
	}
	return ksPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if ksPath != "" {
		os.RemoveAll(filepath.Dir(ksPath))
	}
	os.Exit(code)
}

type env struct {
	t    *testing.T
	url  string
	p    *plugin
	host *sdktest.Host
}

func hashOf(t *testing.T, pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func recipePath(t *testing.T) string {
	p, err := filepath.Abs("testdata/android-recipe.sh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newEnv(t *testing.T, extra string) *env { return newEnvWith(t, extra, nil) }

// newEnvWith is newEnv with mod applied to the config before Start.
func newEnvWith(t *testing.T, extra string, mod func(*Config)) *env {
	h := sdktest.NewHost(t, "appbuild.v1")
	h.ConfigYAML = testConfig(t, extra)
	p, url := startInstance(t, h, mod)
	return &env{t: t, url: url, p: p, host: h}
}

// testConfig is the plugin config of the tests: user admin:guessme and the
// test recipe for android, plus extra YAML.
func testConfig(t *testing.T, extra string) string {
	return fmt.Sprintf(`
users:
  - name: admin
    password_bcrypt: %q
max_concurrent: 2
retention: 2
recipes:
  android:
    command: [%q]
    env: ["KEYSTORE=%s", "KS_PASS=pass123"]
    timeout: 60s
%s`, hashOf(t, "guessme"), recipePath(t), keystore(t), extra)
}

// startInstance starts an instance on h, with mod applied to its config
// before Start, and serves it until the test ends. A second instance on the
// same host is what the host does for a swap.
func startInstance(t *testing.T, h sdk.Host, mod func(*Config)) (*plugin, string) {
	t.Helper()
	p, err := newPlugin(h)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(&p.cfg)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Stop(ctx)
	})
	return p, srv.URL
}

func (e *env) do(method, path, body string, want int) []byte {
	e.t.Helper()
	b, st := e.req(method, path, body, "admin", "guessme")
	if st != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, b)
	}
	return b
}

func (e *env) req(method, path, body, user, pass string) ([]byte, int) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, _ := http.NewRequest(method, e.url+path, rd)
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b, resp.StatusCode
}

func decodeAs[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func TestAuth(t *testing.T) {
	e := newEnv(t, "")
	for _, c := range []struct{ user, pass string }{{"", ""}, {"admin", "wrong"}, {"nobody", "guessme"}} {
		r, _ := http.NewRequest("GET", e.url+"/api/app", nil)
		if c.user != "" {
			r.SetBasicAuth(c.user, c.pass)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("%+v: status %d, WWW-Authenticate %q", c, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	// The seed's header (admin:guessme).
	r, _ := http.NewRequest("GET", e.url+"/api/app", nil)
	r.Header.Set("Authorization", "Basic YWRtaW46Z3Vlc3NtZQ==")
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("seed auth: %d %s", resp.StatusCode, b)
	}
}

func TestConfigRejectsPlainPassword(t *testing.T) {
	h := sdktest.NewHost(t, "appbuild.v1")
	h.ConfigYAML = "users:\n  - name: admin\n    password_bcrypt: guessme\n"
	if _, err := newPlugin(h); err == nil || !strings.Contains(err.Error(), "bcrypt") {
		t.Fatalf("plain text password accepted: %v", err)
	}
}

func TestCRUD(t *testing.T) {
	e := newEnv(t, "")
	app := decodeAs[App](t, e.do("POST", "/api/app", `{"name": "周末", "platforms": ["android"]}`, 201))
	if !validID(app.ID) || app.Name != "周末" || !app.Validate || app.Created.IsZero() {
		t.Fatalf("created app %+v", app)
	}
	// Validation: nothing is created on 400.
	for _, body := range []string{
		`{"name": "", "platforms": ["android"]}`,
		`{"name": "x", "platforms": ["windows"]}`,
		`{"name": "x", "platforms": []}`,
		`{"name": "x", "platforms": ["android"], "color": "red"}`,
		`{"name": "x"`,
		`{"name": "` + strings.Repeat("x", 70000) + `", "platforms": ["android"]}`,
	} {
		b, st := e.req("POST", "/api/app", body, "admin", "guessme")
		if st != 400 && st != 413 {
			t.Errorf("%.60s: status %d %s", body, st, b)
		}
		if !bytes.Contains(b, []byte(`"error"`)) {
			t.Errorf("no error message: %s", b)
		}
	}
	list := decodeAs[[]App](t, e.do("GET", "/api/app", "", 200))
	if len(list) != 1 {
		t.Fatalf("list after failed creates: %v", list)
	}
	upd := decodeAs[App](t, e.do("PUT", "/api/app/"+app.ID, `{"name": "周末去哪儿", "platforms": ["android", "ios"]}`, 201))
	if upd.Name != "周末去哪儿" || len(upd.Platforms) != 2 || !upd.Updated.After(app.Created) && upd.Updated != app.Created {
		t.Fatalf("updated %+v", upd)
	}

	// Versions, with the seed's spelling "platforms" for the platform.
	v := decodeAs[Version](t, e.do("POST", "/api/app/"+app.ID+"/version", `{"code": "1", "name": "0.0.1", "platforms": "android"}`, 201))
	if v.Platform != "android" || v.Code != "1" {
		t.Fatalf("version %+v", v)
	}
	e.do("POST", "/api/app/"+app.ID+"/version", `{"code": "1", "name": "again", "platform": "android"}`, 400)
	e.do("POST", "/api/app/"+app.ID+"/version", `{"code": "1", "name": "0.0.1", "platform": "ios"}`, 201) // same code, other platform
	e.do("POST", "/api/app/"+app.ID+"/version", `{"code": "2", "name": "x", "platform": "symbian"}`, 400)
	v2 := decodeAs[Version](t, e.do("PUT", "/api/app/"+app.ID+"/version/"+v.ID, `{"code": "1", "name": "0.0.2", "platforms": "android", "git_tag": "v0.0.2"}`, 201))
	if v2.Name != "0.0.2" || v2.GitTag != "v0.0.2" || v2.ID != v.ID {
		t.Fatalf("version update %+v", v2)
	}
	if got := decodeAs[[]Version](t, e.do("GET", "/api/app/"+app.ID+"/version", "", 200)); len(got) != 2 {
		t.Fatalf("versions %v", got)
	}
	e.do("DELETE", "/api/app/"+app.ID+"/version/"+v.ID, "", 204)
	e.do("GET", "/api/app/"+app.ID+"/version/"+v.ID, "", 404)

	// Channels: code unique per app.
	c := decodeAs[Channel](t, e.do("POST", "/api/app/"+app.ID+"/channel", `{"code": "and-a0", "name": "测试", "platforms": "android"}`, 201))
	e.do("POST", "/api/app/"+app.ID+"/channel", `{"code": "and-a0", "name": "dup", "platform": "android"}`, 400)
	e.do("POST", "/api/app/"+app.ID+"/channel", `{"code": "a/b", "name": "bad", "platform": "android"}`, 400)
	got := decodeAs[Channel](t, e.do("GET", "/api/app/"+app.ID+"/channel/"+c.ID, "", 200))
	if got.Code != "and-a0" || got.Name != "测试" {
		t.Fatalf("channel %+v", got)
	}
	e.do("PUT", "/api/app/"+app.ID+"/channel/"+c.ID, `{"code": "and-a0", "name": "测试2", "platform": "android"}`, 201)
	// Removing a platform still in use is refused.
	e.do("PUT", "/api/app/"+app.ID, `{"platforms": ["ios"]}`, 400)

	// Soft delete.
	e.do("DELETE", "/api/app/"+app.ID, "", 204)
	e.do("GET", "/api/app/"+app.ID, "", 404)
	e.do("GET", "/api/app/"+app.ID+"/channel", "", 404)
	e.do("DELETE", "/api/app/"+app.ID, "", 404)
	if b := e.do("GET", "/api/app", "", 200); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("list after delete: %s", b)
	}
	raw, err := e.host.Store().Get(context.Background(), kApp+app.ID)
	if err != nil || !bytes.Contains(raw, []byte(`"validate":false`)) {
		t.Fatalf("soft-deleted record: %s %v", raw, err)
	}
	e.do("GET", "/api/app/0123456789abcdef01234567", "", 404)
	e.do("GET", "/api/app/nothex", "", 404)
}

type fixture struct {
	app, version string
}

func (e *env) setup(gitTag string, channels ...string) fixture {
	app := decodeAs[App](e.t, e.do("POST", "/api/app", `{"name": "demo", "platforms": ["android"]}`, 201))
	v := decodeAs[Version](e.t, e.do("POST", "/api/app/"+app.ID+"/version",
		fmt.Sprintf(`{"code": "7", "name": "1.2.3", "platform": "android", "git_tag": %q}`, gitTag), 201))
	for _, c := range channels {
		e.do("POST", "/api/app/"+app.ID+"/channel", fmt.Sprintf(`{"code": %q, "name": "store %s"}`, c, c), 201)
	}
	return fixture{app.ID, v.ID}
}

func (e *env) startBuild(f fixture, channels ...string) Build {
	body, _ := json.Marshal(buildRequest{AppID: f.app, VersionID: f.version, Channels: channels})
	return decodeAs[Build](e.t, e.do("POST", "/api/build", string(body), 200))
}

func (e *env) wait(id string, timeout time.Duration, states ...string) Build {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b := decodeAs[Build](e.t, e.do("GET", "/api/build/"+id, "", 200))
		for _, s := range states {
			if b.Status == s {
				return b
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("build %s still %s after %s; want %v", id, b.Status, timeout, states)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func verifyAPK(t *testing.T, path, channel string) {
	t.Helper()
	out, err := exec.Command("apksigner", "verify", "-v", "--min-sdk-version", "24", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "APK Signature Scheme v2): true") {
		t.Fatalf("apksigner verify %s: %v\n%s", path, err, out)
	}
	info, err := apkchannel.ReadFile(path)
	if err != nil || info == nil || info.Channel != channel {
		t.Fatalf("%s: channel %+v %v, want %s", path, info, err, channel)
	}
}

func TestStampBuild(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("v1.2.3", "huawei", "xiaomi", "and-a0")
	b := e.startBuild(f, "huawei", "xiaomi", "and-a0")
	if b.Status != StatusQueued || len(b.Results) != 3 {
		t.Fatalf("new build %+v", b)
	}
	b = e.wait(b.ID, 60*time.Second, StatusSucceeded, StatusFailed)
	if b.Status != StatusSucceeded || b.Method != ModeStamp {
		t.Fatalf("build %+v", b)
	}
	for _, r := range b.Results {
		if r.Status != StatusSucceeded || len(r.Artifacts) != 1 {
			t.Fatalf("result %+v", r)
		}
		a := r.Artifacts[0]
		if a.URL != "/appbuild/v1/download/"+b.ID+"/"+a.File || a.File != "app-1.2.3-"+r.Channel+".apk" {
			t.Errorf("artifact %+v", a)
		}
		// Download, verify, read the channel back.
		data := e.do("GET", strings.TrimPrefix(a.URL, "/appbuild/v1"), "", 200)
		if int64(len(data)) != a.Size {
			t.Fatalf("downloaded %d bytes, record says %d", len(data), a.Size)
		}
		path := filepath.Join(t.TempDir(), a.File)
		os.WriteFile(path, data, 0o644)
		verifyAPK(t, path, r.Channel)
		ch := decodeAs[map[string]any](t, e.do("GET", "/api/apk/channel?build="+b.ID+"&file="+a.File, "", 200))
		if ch["channel"] != r.Channel {
			t.Errorf("reader endpoint: %v", ch)
		}
	}
	// Range request.
	a := b.Results[0].Artifacts[0]
	req, _ := http.NewRequest("GET", e.url+"/download/"+b.ID+"/"+a.File, nil)
	req.SetBasicAuth("admin", "guessme")
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || len(part) != 10 || resp.Header.Get("Content-Type") != "application/vnd.android.package-archive" {
		t.Fatalf("range: %d, %d bytes, %s", resp.StatusCode, len(part), resp.Header.Get("Content-Type"))
	}
	// Download URLs per channel.
	urls := decodeAs[map[string]any](t, e.do("GET", "/api/build/"+b.ID+"/download", "", 200))
	if chs := urls["channels"].([]any); len(chs) != 3 {
		t.Fatalf("download urls: %v", urls)
	}
	hist := decodeAs[[]Build](t, e.do("GET", "/api/app/"+f.app+"/build", "", 200))
	if len(hist) != 1 || hist[0].ID != b.ID {
		t.Fatalf("history %v", hist)
	}
	log := string(e.do("GET", "/api/build/"+b.ID+"/log", "", 200))
	if !strings.Contains(log, "recipe: wrote") || !strings.Contains(log, "stamped") {
		t.Fatalf("log:\n%s", log)
	}
	if st := decodeAs[map[string]bool](t, e.do("GET", "/api/build/status/"+f.app, "", 200)); st["running"] {
		t.Fatal("status says running after the build")
	}
	e.do("POST", "/api/build/"+b.ID+"/cancel", "", 409)
}

func TestBuildValidation(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("x", "huawei")
	for _, body := range []string{
		`{"appid": "` + f.app + `", "versionid": "` + f.version + `", "channels": []}`,
		`{"appid": "` + f.app + `", "versionid": "` + f.version + `", "channels": ["nope"]}`,
		`{"appid": "` + f.app + `", "versionid": "` + f.version + `", "channels": ["huawei", "huawei"]}`,
		`{"appid": "0123456789abcdef01234567", "versionid": "` + f.version + `", "channels": ["huawei"]}`,
		`{"appid": "` + f.app + `", "versionid": "0123456789abcdef01234567", "channels": ["huawei"]}`,
		`{"appid": "` + f.app + `", "versionid": "` + f.version + `", "channels": ["huawei"], "x": 1}`,
	} {
		e.do("POST", "/api/build", body, 400)
	}
	hist := e.do("GET", "/api/app/"+f.app+"/build", "", 200)
	if strings.TrimSpace(string(hist)) != "[]" {
		t.Fatalf("history after rejected builds: %s", hist)
	}
}

func TestFailingRecipe(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("fail", "huawei")
	b := e.wait(e.startBuild(f, "huawei").ID, 30*time.Second, StatusSucceeded, StatusFailed)
	if b.Status != StatusFailed || b.ExitCode == nil || *b.ExitCode != 3 || !strings.Contains(b.LogTail, "on purpose") {
		t.Fatalf("failed build %+v", b)
	}
	if b.Results[0].Status == StatusSucceeded || len(b.Results[0].Artifacts) != 0 {
		t.Fatalf("results %+v", b.Results)
	}
}

func TestUnsignedAPK(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("unsigned", "huawei")
	b := e.wait(e.startBuild(f, "huawei").ID, 30*time.Second, StatusSucceeded, StatusFailed)
	if b.Status != StatusFailed || !strings.Contains(b.Reason, "no APK Signing Block") {
		t.Fatalf("unsigned: %+v", b)
	}
}

func TestFallbackPerChannel(t *testing.T) {
	e := newEnv(t, "    channel_mode: stamp_or_per_channel\n")
	f := e.setup("unsigned", "huawei", "oppo")
	b := e.wait(e.startBuild(f, "huawei", "oppo").ID, 60*time.Second, StatusSucceeded, StatusFailed)
	if b.Status != StatusSucceeded || b.Method != ModePerChannel || len(b.Results[1].Artifacts) != 1 {
		t.Fatalf("fallback: %+v", b)
	}
	data := e.do("GET", "/download/"+b.ID+"/"+b.Results[1].Artifacts[0].File, "", 200)
	if !bytes.Contains(data, []byte("built for oppo")) {
		t.Fatal("per-channel package was not built for its channel")
	}
}

func TestCancelAndQueue(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("sleep-27.3", "huawei")
	b1 := e.startBuild(f, "huawei")
	e.wait(b1.ID, 10*time.Second, StatusRunning)
	b2 := e.startBuild(f, "huawei") // same app: must queue behind b1
	time.Sleep(1500 * time.Millisecond)
	if got := e.wait(b2.ID, 0, StatusQueued, StatusRunning, StatusSucceeded, StatusFailed); got.Status != StatusQueued {
		t.Fatalf("second build of the app is %s, want queued", got.Status)
	}
	if st := decodeAs[map[string]bool](t, e.do("GET", "/api/build/status/"+f.app, "", 200)); !st["running"] {
		t.Fatal("status says not running")
	}
	// The scan below sees the recipe while it runs.
	waitProc(t, b1.ID, "sleep 27.3")
	// Cancel the queued one, then the running one.
	if c := decodeAs[Build](t, e.do("POST", "/api/build/"+b2.ID+"/cancel", "", 200)); c.Status != StatusCanceled {
		t.Fatalf("cancel queued: %+v", c)
	}
	e.do("POST", "/api/build/"+b1.ID+"/cancel", "", 202)
	got := e.wait(b1.ID, 15*time.Second, StatusCanceled, StatusFailed, StatusSucceeded)
	if got.Status != StatusCanceled || !strings.Contains(got.Reason, "canceled") {
		t.Fatalf("cancel running: %+v", got)
	}
	// The recipe's sleep was killed with its process group.
	if left := procs.WithEnv("APPBUILD_BUILD_ID=" + b1.ID); len(left) > 0 {
		t.Fatalf("recipe processes survived cancel: %v", left)
	}
}

// waitProc waits (10 s at most) until build id runs a process whose command
// line is cmdline.
func waitProc(t *testing.T, id, cmdline string) {
	t.Helper()
	if ok, ps := procs.Await("APPBUILD_BUILD_ID="+id, cmdline, 10*time.Second); !ok {
		t.Fatalf("build %s runs no %q after 10s: %v", id, cmdline, ps)
	}
}

func TestGlobalConcurrencyLimit(t *testing.T) {
	e := newEnvWith(t, "", func(c *Config) { c.MaxConcurrent = 1 })
	f1 := e.setup("sleep-30", "huawei")
	f2 := e.setup("", "huawei") // another app: only the global limit holds it
	b1 := e.startBuild(f1, "huawei")
	e.wait(b1.ID, 10*time.Second, StatusRunning)
	b2 := e.startBuild(f2, "huawei")
	time.Sleep(1500 * time.Millisecond)
	if got := e.wait(b2.ID, 0, StatusQueued, StatusRunning, StatusSucceeded, StatusFailed); got.Status != StatusQueued {
		t.Fatalf("build of another app past max_concurrent 1: %s", got.Status)
	}
	e.do("POST", "/api/build/"+b1.ID+"/cancel", "", 202)
	if got := e.wait(b2.ID, 60*time.Second, StatusSucceeded, StatusFailed); got.Status != StatusSucceeded {
		t.Fatalf("queued build after the slot freed: %+v", got)
	}
}

func TestTimeout(t *testing.T) {
	e := newEnvWith(t, "", func(c *Config) {
		r := c.Recipes["android"]
		r.Timeout = time.Second
		c.Recipes["android"] = r
	})
	f := e.setup("sleep-20", "huawei")
	b := e.wait(e.startBuild(f, "huawei").ID, 20*time.Second, StatusFailed, StatusSucceeded)
	if b.Status != StatusFailed || !strings.Contains(b.Reason, "timed out") {
		t.Fatalf("timeout: %+v", b)
	}
}

func TestOrphanedBuildFailedAtStart(t *testing.T) {
	h := sdktest.NewHost(t, "appbuild.v1")
	st := h.Store()
	ctx := context.Background()
	now := time.Now().UTC()
	id := newID()
	b := Build{ID: id, AppID: newID(), Status: StatusRunning, Started: &now, Created: now,
		Results: []ChannelResult{{Channel: "x", Status: StatusPending, Artifacts: []Artifact{}}}}
	st.Update(ctx, func(tx sdk.Tx) error {
		putJSON(tx, kBuild+id, b)
		// A lease from a process that does not exist any more.
		putJSON(tx, kLease+id, leaseEntry{Proc: "nohost/1/1"}, sdk.WithTTL(time.Minute))
		return putJSON(tx, kActive+id, activeEntry{App: b.AppID, Status: StatusRunning})
	})
	p, err := newPlugin(h)
	if err != nil {
		t.Fatal(err)
	}
	// Another host name: only the lease's expiry can free it, so it stays.
	if err := p.reapOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.getBuild(ctx, id); got.Status != StatusRunning {
		t.Fatalf("lease of another machine's process not respected: %s", got.Status)
	}
	host, _ := os.Hostname()
	st.Put(ctx, kLease+id, []byte(`{"proc":"`+host+`/999999999/1"}`), sdk.WithTTL(time.Minute))
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Stop(ctx)
	got, _ := p.getBuild(ctx, id)
	if got.Status != StatusFailed || !strings.Contains(got.Reason, "interrupted") {
		t.Fatalf("orphan: %+v", got)
	}
	if _, err := st.Get(ctx, kActive+id); err == nil {
		t.Fatal("orphan still active")
	}
}

func TestRetention(t *testing.T) {
	e := newEnv(t, "") // retention: 2
	f := e.setup("r", "huawei")
	var ids []string
	for i := 0; i < 3; i++ {
		b := e.wait(e.startBuild(f, "huawei").ID, 60*time.Second, StatusSucceeded, StatusFailed)
		if b.Status != StatusSucceeded {
			t.Fatalf("build %d: %+v", i, b)
		}
		ids = append(ids, b.ID)
	}
	first := decodeAs[Build](t, e.do("GET", "/api/build/"+ids[0], "", 200))
	if !first.Removed {
		t.Fatal("oldest build's artifacts not removed")
	}
	if _, err := os.Stat(filepath.Join(e.p.artifactsDir, ids[0])); !os.IsNotExist(err) {
		t.Fatalf("artifact dir of oldest build still there: %v", err)
	}
	e.do("GET", "/download/"+ids[0]+"/"+first.Results[0].Artifacts[0].File, "", 410)
	last := decodeAs[Build](t, e.do("GET", "/api/build/"+ids[2], "", 200))
	e.do("GET", "/download/"+ids[2]+"/"+last.Results[0].Artifacts[0].File, "", 200)
}

// second starts another instance on the same host (store and data dir), as
// the host does for a swap.
func (e *env) second() (*plugin, string) { return startInstance(e.t, e.host, nil) }

func TestSwapHandsRunningBuildOver(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("sleep-5", "huawei", "oppo")
	b := e.startBuild(f, "huawei", "oppo")
	e.wait(b.ID, 10*time.Second, StatusRunning)
	_, url2 := e.second()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Stop returned with the build still running: it was handed over, not
	// waited for or killed.
	if got, _ := e.p.getBuild(context.Background(), b.ID); got.Status != StatusRunning {
		t.Fatalf("after the old instance's Stop the build is %s, want still running", got.Status)
	}
	e.url = url2
	got := e.wait(b.ID, 30*time.Second, StatusSucceeded, StatusFailed, StatusCanceled)
	if got.Status != StatusSucceeded || len(got.Results[1].Artifacts) != 1 {
		t.Fatalf("handed-over build: %+v", got)
	}
	data := e.do("GET", "/download/"+b.ID+"/"+got.Results[1].Artifacts[0].File, "", 200)
	path := filepath.Join(t.TempDir(), "x.apk")
	os.WriteFile(path, data, 0o644)
	verifyAPK(t, path, "oppo")
}

func TestSwapThenCancelThroughAdopter(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("sleep-30", "huawei")
	b := e.startBuild(f, "huawei")
	e.wait(b.ID, 10*time.Second, StatusRunning)
	_, url2 := e.second()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e.p.Stop(ctx)
	e.url = url2
	e.do("POST", "/api/build/"+b.ID+"/cancel", "", 202)
	got := e.wait(b.ID, 15*time.Second, StatusCanceled, StatusFailed, StatusSucceeded)
	if got.Status != StatusCanceled {
		t.Fatalf("cancel after swap: %+v", got)
	}
}

func TestStopWithoutSuccessorFailsBuild(t *testing.T) {
	e := newEnv(t, "")
	f := e.setup("sleep-30", "huawei")
	b := e.startBuild(f, "huawei")
	e.wait(b.ID, 10*time.Second, StatusRunning)
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	e.p.Stop(ctx)
	var got Build
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, err := e.p.getBuild(context.Background(), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got = *g; got.done() || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got.Status != StatusFailed || !strings.Contains(got.Reason, "stopped") {
		t.Fatalf("unload during build: %+v", got)
	}
}

func TestLogFollowEndsWhenDraining(t *testing.T) {
	h := sdktest.NewHost(t, "appbuild.v1")
	h.ConfigYAML = testConfig(t, "")
	p, url := startInstance(t, h, nil)
	e := &env{t: t, url: url, p: p, host: h}
	f := e.setup("sleep-30", "huawei")
	b := e.startBuild(f, "huawei")
	e.wait(b.ID, 10*time.Second, StatusRunning)
	waitProc(t, b.ID, "sleep 30")
	// The recipe has written its first line, but the runner copies it into
	// the log file from a pipe: wait until it is there, or the follow
	// below may end (on draining) before it arrives.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(string(e.do("GET", "/api/build/"+b.ID+"/log", "", 200)), "tag=sleep-30"); {
		if time.Now().After(deadline) {
			t.Fatal("the recipe's first line never reached the build log")
		}
		time.Sleep(20 * time.Millisecond)
	}
	req, _ := http.NewRequest("GET", e.url+"/api/build/"+b.ID+"/log?follow=1", nil)
	req.SetBasicAuth("admin", "guessme")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ended := make(chan string, 1)
	go func() { b, _ := io.ReadAll(resp.Body); ended <- string(b) }()
	h.StartDraining()
	select {
	case log := <-ended:
		if !strings.Contains(log, "tag=sleep-30") {
			t.Fatalf("followed log before draining:\n%s", log)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("log follow still streaming 20s after the instance began draining")
	}
	if got := e.wait(b.ID, 0, StatusRunning, StatusQueued, StatusSucceeded, StatusFailed, StatusCanceled); got.Status != StatusRunning {
		t.Fatalf("the build is %s: the follow must have ended because of draining, not the build", got.Status)
	}
	e.do("POST", "/api/build/"+b.ID+"/cancel", "", 202)
	e.wait(b.ID, 20*time.Second, StatusCanceled)
}
