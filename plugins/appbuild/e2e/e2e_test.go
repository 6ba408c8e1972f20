// Package e2e drives the appbuild plugin through the real plugd host and a
// real pcompile build: the seed's endpoints, auth, validation, real Android
// builds signed by apksigner and stamped per channel, failures, cancel,
// queueing, downloads with Range, a swap during a build and host restarts.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/internal/testhost"
	"github.com/plugd/plugd/plugins/appbuild/apkchannel"
	"github.com/plugd/plugd/plugins/appbuild/internal/procs"
	"golang.org/x/crypto/bcrypt"
)

const seedAuth = "Basic YWRtaW46Z3Vlc3NtZQ==" // admin:guessme, from the seed

type client struct {
	t    *testing.T
	base string // http://host/appbuild/v1
}

func (c *client) raw(method, path, body string, hdr ...string) (*http.Response, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", seedAuth)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (c *client) do(method, path, body string, want int) []byte {
	c.t.Helper()
	resp, b := c.raw(method, path, body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	return b
}

func obj(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %s", b)
	}
	return m
}

func list(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var m []map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON array: %s", b)
	}
	return m
}

func (c *client) waitBuild(id string, timeout time.Duration, states ...string) map[string]any {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b := obj(c.t, c.do("GET", "/api/build/"+id, "", 200))
		for _, s := range states {
			if b["status"] == s {
				return b
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("build %s is %v after %s, want %v", id, b["status"], timeout, states)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// tools checks the tools the recipe needs, makes a throwaway signing key and
// builds the reader tool scripts/apkchannel.
func tools(t *testing.T) (keystore, reader string) {
	for _, tool := range []string{"apksigner", "zipalign", "keytool", "zip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/deps/appbuild.sh", tool)
		}
	}
	dir := t.TempDir()
	ks := filepath.Join(dir, "throwaway.jks")
	out, err := exec.Command("keytool", "-genkeypair", "-keystore", ks, "-storepass", "pass123", "-keypass", "pass123",
		"-alias", "k", "-keyalg", "RSA", "-keysize", "2048", "-validity", "10", "-dname", "CN=throwaway").CombinedOutput()
	if err != nil {
		t.Fatalf("keytool: %v\n%s", err, out)
	}
	reader = filepath.Join(dir, "apkchannel")
	cmd := exec.Command("go", "build", "-o", reader, "./scripts/apkchannel")
	cmd.Dir = testhost.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./scripts/apkchannel: %v\n%s", err, out)
	}
	return ks, reader
}

// verify checks a channel package: apksigner accepts its signature, and the
// channel reads back through the package and through the reader tool.
func verify(t *testing.T, reader string, data []byte, channel string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pkg.apk")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("apksigner", "verify", "-v", "--min-sdk-version", "24", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "APK Signature Scheme v2): true") {
		t.Fatalf("apksigner verify (%s): %v\n%s", channel, err, out)
	}
	info, err := apkchannel.ReadFile(path)
	if err != nil || info == nil || info.Channel != channel {
		t.Fatalf("channel read back: %+v %v, want %s", info, err, channel)
	}
	out, err = exec.Command(reader, "read", path).Output()
	if err != nil || string(out) != path+"\t"+channel+"\n" {
		t.Fatalf("apkchannel read: %v %q, want %q", err, out, path+"\t"+channel+"\n")
	}
}

func TestAppBuild(t *testing.T) {
	ks, reader := tools(t)
	root := testhost.RepoRoot(t)
	hash, _ := bcrypt.GenerateFromPassword([]byte("guessme"), bcrypt.MinCost)
	cfg := fmt.Sprintf(`stop_timeout: 10s
plugins:
  appbuild:
    users:
      - name: admin
        password_bcrypt: %q
    max_concurrent: 2
    retention: 3
    recipes:
      android:
        command: [%q]
        env: ["KEYSTORE=%s", "KS_PASS=pass123"]
        timeout: 60s
`, hash, filepath.Join(root, "plugins/appbuild/testdata/android-recipe.sh"), ks)
	h := testhost.Start(t, testhost.Options{Config: cfg})
	so := h.Compile(t, "plugins/appbuild")
	h.LoadAPI(t, "appbuild.v1", so)
	c := &client{t: t, base: h.URL + "/appbuild/v1"}

	// ---- auth
	for _, hdr := range []string{"", "Basic YWRtaW46d3Jvbmc=", "Bearer x"} {
		resp, _ := c.raw("GET", "/api/app", "", "Authorization", hdr)
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Fatalf("auth %q: %d %q", hdr, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	resp, _ := c.raw("GET", "/download/0123456789abcdef01234567/x.apk", "", "Authorization", "")
	if resp.StatusCode != 401 {
		t.Fatalf("download without auth: %d", resp.StatusCode)
	}

	// ---- the seed's endpoints with its example bodies
	if b := c.do("GET", "/api/app", "", 200); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("empty app list: %s", b)
	}
	app := obj(t, c.do("POST", "/api/app", `{"name": "周末", "platforms": ["android"]}`, 201))
	appID, _ := app["id"].(string)
	if len(appID) != 24 || app["name"] != "周末" || app["validate"] != true || app["created"] == nil {
		t.Fatalf("created app: %v", app)
	}
	app = obj(t, c.do("PUT", "/api/app/"+appID, `{"name": "周末去哪儿", "platforms": ["android", "ios"]}`, 201))
	if app["name"] != "周末去哪儿" {
		t.Fatalf("put app: %v", app)
	}
	if got := obj(t, c.do("GET", "/api/app/"+appID, "", 200)); got["name"] != "周末去哪儿" {
		t.Fatalf("get app: %v", got)
	}
	if l := list(t, c.do("GET", "/api/app", "", 200)); len(l) != 1 || l[0]["id"] != appID {
		t.Fatalf("list: %v", l)
	}
	if b := c.do("GET", "/api/app/"+appID+"/version", "", 200); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("empty version list: %s", b)
	}
	ver := obj(t, c.do("POST", "/api/app/"+appID+"/version", `{"code": "1", "name": "0.0.1", "platform": "android"}`, 201))
	verID := ver["id"].(string)
	ver = obj(t, c.do("PUT", "/api/app/"+appID+"/version/"+verID, `{"code": "1", "name": "0.0.1", "platforms": "android", "git_tag": "v0.0.1"}`, 201))
	if ver["git_tag"] != "v0.0.1" || ver["platform"] != "android" || ver["platforms"] != "android" {
		t.Fatalf("put version: %v", ver)
	}
	c.do("GET", "/api/app/"+appID+"/version/"+verID, "", 200)
	ch := obj(t, c.do("POST", "/api/app/"+appID+"/channel", `{"code": "and-a0", "name": "测试", "platforms": "android"}`, 201))
	chID := ch["id"].(string)
	c.do("PUT", "/api/app/"+appID+"/channel/"+chID, `{"code": "and-a0", "name": "测试", "platform": "android"}`, 201)
	if got := obj(t, c.do("GET", "/api/app/"+appID+"/channel/"+chID, "", 200)); got["code"] != "and-a0" || got["name"] != "测试" || got["platforms"] != "android" {
		t.Fatalf("get channel: %v", got)
	}
	if l := list(t, c.do("GET", "/api/app/"+appID+"/channel", "", 200)); len(l) != 1 || l[0]["code"] != "and-a0" || l[0]["platforms"] != "android" {
		t.Fatalf("channel list: %v", l)
	}
	for _, code := range []string{"huawei", "xiaomi"} {
		c.do("POST", "/api/app/"+appID+"/channel", `{"code": "`+code+`", "name": "`+code+`", "platform": "android"}`, 201)
	}
	tmp := obj(t, c.do("POST", "/api/app/"+appID+"/version", `{"code": "9", "name": "tmp", "platform": "ios"}`, 201))
	c.do("DELETE", "/api/app/"+appID+"/version/"+tmp["id"].(string), "", 204)
	c.do("GET", "/api/app/"+appID+"/version/"+tmp["id"].(string), "", 404)
	c.do("DELETE", "/api/app/"+appID+"/version/"+tmp["id"].(string), "", 404)
	tmpCh := obj(t, c.do("POST", "/api/app/"+appID+"/channel", `{"code": "tmp", "name": "tmp", "platform": "ios"}`, 201))
	c.do("DELETE", "/api/app/"+appID+"/channel/"+tmpCh["id"].(string), "", 204)
	c.do("GET", "/api/app/"+appID+"/channel/"+tmpCh["id"].(string), "", 404)
	c.do("DELETE", "/api/app/"+appID+"/channel/"+tmpCh["id"].(string), "", 404)
	// Unknown ids: 404 for every method.
	const unknown = "0123456789abcdef01234567"
	for _, v := range []struct{ method, path, body string }{
		{"PUT", "/api/app/" + unknown, `{"name": "x"}`},
		{"DELETE", "/api/app/" + unknown, ""},
		{"GET", "/api/app/" + unknown + "/version", ""},
		{"POST", "/api/app/" + unknown + "/channel", `{"code": "x", "name": "x", "platform": "android"}`},
		{"GET", "/api/app/" + appID + "/version/" + unknown, ""},
		{"PUT", "/api/app/" + appID + "/version/" + unknown, `{"name": "x"}`},
		{"PUT", "/api/app/" + appID + "/channel/" + unknown, `{"name": "x"}`},
		{"DELETE", "/api/app/" + appID + "/channel/" + unknown, ""},
		{"GET", "/api/build/status/" + unknown, ""},
		{"GET", "/api/app/" + unknown + "/build", ""},
		{"POST", "/api/build/" + unknown + "/cancel", ""},
		{"GET", "/api/build/" + unknown + "/log", ""},
		{"GET", "/api/build/" + unknown + "/download", ""},
	} {
		if resp, b := c.raw(v.method, v.path, v.body); resp.StatusCode != 404 || !bytes.Contains(b, []byte(`"error"`)) {
			t.Errorf("%s %s: %d %s, want 404", v.method, v.path, resp.StatusCode, b)
		}
	}

	// ---- validation: 400 and nothing changed
	appBefore := c.do("GET", "/api/app/"+appID, "", 200)
	verBefore := c.do("GET", "/api/app/"+appID+"/version/"+verID, "", 200)
	chBefore := c.do("GET", "/api/app/"+appID+"/channel/"+chID, "", 200)
	// The seed's own version and channel examples lack a comma after
	// "code": invalid JSON, refused as such.
	for _, v := range []struct{ method, path, body string }{
		{"POST", "/api/app/" + appID + "/version", "{\n\t\"code\": \"1\"\n\t\"name\": \"0.0.1\",\n\t\"platform\": \"android\"\n}"},
		{"PUT", "/api/app/" + appID + "/version/" + verID, "{\n\t\"code\": \"1\"\n\t\"name\": \"0.0.1\",\n\t\"platforms\": \"android\"\n}"},
		{"POST", "/api/app/" + appID + "/channel", "{\n\t\"code\": \"and-a0\"\n\t\"name\": \"测试\",\n\t\"platforms\": \"android\"\n}"},
		{"PUT", "/api/app/" + appID + "/channel/" + chID, "{\n\t\"code\": \"and-a0\"\n\t\"name\": \"测试\",\n\t\"platform\": \"android\"\n}"},
	} {
		resp, b := c.raw(v.method, v.path, v.body)
		if resp.StatusCode != 400 || !bytes.Contains(b, []byte("invalid JSON body")) {
			t.Errorf("seed example %s %s: %d %s", v.method, v.path, resp.StatusCode, b)
		}
	}
	for _, v := range []struct{ method, path, body string }{
		{"POST", "/api/app", `{"name": "", "platforms": ["android"]}`},
		{"POST", "/api/app", `{"name": "x", "platforms": ["winphone"]}`},
		{"POST", "/api/app", `{"name": "x", "platforms": ["android"], "owner": "me"}`},
		{"POST", "/api/app", `{"name": "x", "platforms": ["android"]`},
		{"POST", "/api/app/" + appID + "/version", `{"code": "1", "name": "dup", "platform": "android"}`},
		{"POST", "/api/app/" + appID + "/channel", `{"code": "and-a0", "name": "dup", "platform": "android"}`},
		{"POST", "/api/app/" + appID + "/channel", `{"code": "", "name": "x", "platform": "android"}`},
		{"PUT", "/api/app/" + appID, `{"name": "   "}`},
		{"PUT", "/api/app/" + appID, `{"name": "renamed", "platforms": ["android", "blackberry"]}`},
		{"PUT", "/api/app/" + appID, `{"name": "renamed", "platforms": ["ios"]}`}, // android still in use
		{"PUT", "/api/app/" + appID, `{"name": "renamed", "color": "red"}`},
		{"PUT", "/api/app/" + appID + "/version/" + verID, `{"code": "1", "name": "renamed", "platform": "symbian"}`},
		{"PUT", "/api/app/" + appID + "/version/" + verID, `{"name": "renamed", "git_tag": "a\nb"}`},
		{"PUT", "/api/app/" + appID + "/version/" + verID, `{"name": "renamed", "build": 2}`},
		{"PUT", "/api/app/" + appID + "/channel/" + chID, `{"code": "huawei", "name": "renamed"}`},
		{"PUT", "/api/app/" + appID + "/channel/" + chID, `{"code": "bad code", "name": "renamed"}`},
		{"PUT", "/api/app/" + appID + "/channel/" + chID, `{"name": ""}`},
		{"POST", "/api/build", `{"appid": "` + appID + `", "versionid": "` + verID + `", "channels": ["huawei"], "priority": 1}`},
	} {
		resp, b := c.raw(v.method, v.path, v.body)
		if resp.StatusCode != 400 || !bytes.Contains(b, []byte(`"error"`)) {
			t.Errorf("%s %s %s: %d %s", v.method, v.path, v.body, resp.StatusCode, b)
		}
	}
	resp, b := c.raw("POST", "/api/app", `{"name": "`+strings.Repeat("n", 100<<10)+`", "platforms": ["android"]}`)
	if resp.StatusCode != 413 || !bytes.Contains(b, []byte("body larger than 65536 bytes")) {
		t.Errorf("oversize body: %d %s", resp.StatusCode, b)
	}
	resp, b = c.raw("PUT", "/api/app/"+appID+"/channel/"+chID, `{"name": "`+strings.Repeat("n", 100<<10)+`"}`)
	if resp.StatusCode != 413 || !bytes.Contains(b, []byte("body larger than")) {
		t.Errorf("oversize PUT body: %d %s", resp.StatusCode, b)
	}
	for path, before := range map[string][]byte{"/api/app/" + appID: appBefore,
		"/api/app/" + appID + "/version/" + verID: verBefore, "/api/app/" + appID + "/channel/" + chID: chBefore} {
		if after := c.do("GET", path, "", 200); !bytes.Equal(after, before) {
			t.Errorf("rejected requests changed %s:\n%s\n%s", path, before, after)
		}
	}
	if l := list(t, c.do("GET", "/api/app/"+appID+"/version", "", 200)); len(l) != 1 {
		t.Fatalf("rejected requests changed versions: %v", l)
	}
	if l := list(t, c.do("GET", "/api/app", "", 200)); len(l) != 1 {
		t.Fatalf("rejected requests changed the app list: %v", l)
	}
	if l := list(t, c.do("GET", "/api/app/"+appID+"/channel", "", 200)); len(l) != 3 {
		t.Fatalf("rejected requests changed channels: %v", l)
	}
	c.do("GET", "/api/app/0123456789abcdef01234567", "", 404)
	c.do("GET", "/api/build/0123456789abcdef01234567", "", 404)

	// ---- a real Android build: one signed APK, three stamped channels
	build := obj(t, c.do("POST", "/api/build", `{"appid": "`+appID+`", "versionid": "`+verID+`", "channels": ["and-a0", "huawei", "xiaomi"]}`, 200))
	bid := build["id"].(string)
	if st := obj(t, c.do("GET", "/api/build/status/"+appID, "", 200)); st["running"] != true {
		t.Fatalf("status right after POST /api/build: %v", st)
	}
	build = c.waitBuild(bid, 90*time.Second, "succeeded", "failed")
	if build["status"] != "succeeded" || build["method"] != "stamp" {
		t.Fatalf("build: %v", build)
	}
	if st := obj(t, c.do("GET", "/api/build/status/"+appID, "", 200)); st["running"] != false {
		t.Fatalf("status after build: %v", st)
	}
	urls := obj(t, c.do("GET", "/api/build/"+bid+"/download", "", 200))
	chans := urls["channels"].([]any)
	if len(chans) != 3 {
		t.Fatalf("download urls: %v", urls)
	}
	var firstPath string
	var firstData []byte
	for _, x := range chans {
		m := x.(map[string]any)
		files := m["files"].([]any)
		if len(files) != 1 {
			t.Fatalf("channel %v files: %v", m["channel"], files)
		}
		f := files[0].(map[string]any)
		u := f["download_url"].(string)
		if !strings.HasPrefix(u, h.URL+"/appbuild/v1/download/"+bid+"/") {
			t.Fatalf("download url %s", u)
		}
		path := strings.TrimPrefix(u, c.base)
		resp, data := c.raw("GET", path, "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.android.package-archive" {
			t.Fatalf("download %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if int64(len(data)) != int64(f["size"].(float64)) {
			t.Fatalf("size %d vs record %v", len(data), f["size"])
		}
		verify(t, reader, data, m["channel"].(string))
		// The reader endpoint on an uploaded APK.
		got := obj(t, c.do("POST", "/api/apk/channel", string(data), 200))
		if got["channel"] != m["channel"] {
			t.Fatalf("reader endpoint: %v want %v", got, m["channel"])
		}
		if firstPath == "" {
			firstPath, firstData = path, data
		}
	}
	// Range.
	resp, part := c.raw("GET", firstPath, "", "Range", "bytes=100-199")
	if resp.StatusCode != 206 || !bytes.Equal(part, firstData[100:200]) {
		t.Fatalf("range: %d, %d bytes", resp.StatusCode, len(part))
	}
	resp, part = c.raw("GET", firstPath, "", "Range", fmt.Sprintf("bytes=%d-", len(firstData)-10))
	if resp.StatusCode != 206 || !bytes.Equal(part, firstData[len(firstData)-10:]) {
		t.Fatalf("suffix range: %d, %d bytes", resp.StatusCode, len(part))
	}
	resp, part = c.raw("GET", firstPath, "", "Range", fmt.Sprintf("bytes=%d-", len(firstData)+10))
	if resp.StatusCode != 416 {
		t.Fatalf("unsatisfiable range: %d", resp.StatusCode)
	}
	resp, _ = c.raw("HEAD", firstPath, "")
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(firstData)) || resp.Header.Get("Accept-Ranges") != "bytes" ||
		resp.Header.Get("Content-Type") != "application/vnd.android.package-archive" ||
		!strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment; filename=") {
		t.Fatalf("HEAD: %d %d %v", resp.StatusCode, resp.ContentLength, resp.Header)
	}
	resp, part = c.raw("GET", firstPath, "", "If-None-Match", resp.Header.Get("ETag"))
	if resp.StatusCode != 304 || len(part) != 0 {
		t.Fatalf("If-None-Match with the ETag: %d", resp.StatusCode)
	}
	resp, part = c.raw("GET", firstPath, "", "Range", "bytes=0-9", "If-Range", `"stale"`)
	if resp.StatusCode != 200 || !bytes.Equal(part, firstData) {
		t.Fatalf("If-Range with a stale ETag must send the whole file: %d, %d bytes", resp.StatusCode, len(part))
	}
	if resp, b := c.raw("POST", "/api/apk/channel", "not an APK"); resp.StatusCode != 400 || !bytes.Contains(b, []byte(`"error"`)) {
		t.Fatalf("reader endpoint on a non-APK: %d %s", resp.StatusCode, b)
	}
	c.do("GET", "/download/"+bid+"/nope.apk", "", 404)
	c.do("GET", "/download/"+bid+"/..%2f..%2fetc%2fpasswd", "", 404)
	log := string(c.do("GET", "/api/build/"+bid+"/log", "", 200))
	if !strings.Contains(log, "recipe: wrote") || strings.Count(log, "stamped") != 3 {
		t.Fatalf("log:\n%s", log)
	}

	// ---- build request validation
	c.do("POST", "/api/build", `{"appid": "`+appID+`", "versionid": "`+verID+`", "channels": ["nope"]}`, 400)
	c.do("POST", "/api/build", `{"appid": "`+appID+`", "versionid": "0123456789abcdef01234567", "channels": ["huawei"]}`, 400)

	codes := 100
	newVersion := func(tag string) string {
		codes++
		v := obj(t, c.do("POST", "/api/app/"+appID+"/version", fmt.Sprintf(`{"code": "%d", "name": "1.0", "platform": "android", "git_tag": %q}`, codes, tag), 201))
		return v["id"].(string)
	}
	startBuild := func(verID string, chs ...string) string {
		b, _ := json.Marshal(map[string]any{"appid": appID, "versionid": verID, "channels": chs})
		return obj(t, c.do("POST", "/api/build", string(b), 200))["id"].(string)
	}

	// ---- a failing recipe
	fid := startBuild(newVersion("fail"), "huawei")
	fb := c.waitBuild(fid, 60*time.Second, "succeeded", "failed")
	if fb["status"] != "failed" || fb["exit_code"] != float64(3) || !strings.Contains(fb["log_tail"].(string), "on purpose") {
		t.Fatalf("failing recipe: %v", fb)
	}

	// ---- queueing and cancel: one build per app at a time
	slow := newVersion("sleep-30")
	q1 := startBuild(slow, "huawei")
	c.waitBuild(q1, 30*time.Second, "running")
	q2 := startBuild(verID, "xiaomi")
	time.Sleep(1500 * time.Millisecond)
	if b := c.waitBuild(q2, 0, "queued", "running", "succeeded", "failed"); b["status"] != "queued" {
		t.Fatalf("second build of the app: %v, want queued", b["status"])
	}
	// Follow the running build's log while canceling it.
	followDone := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", c.base+"/api/build/"+q1+"/log?follow=1", nil)
		req.Header.Set("Authorization", seedAuth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			followDone <- "error: " + err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		followDone <- string(b)
	}()
	time.Sleep(300 * time.Millisecond)
	c.do("POST", "/api/build/"+q1+"/cancel", "", 202)
	cb := c.waitBuild(q1, 20*time.Second, "canceled", "failed", "succeeded")
	if cb["status"] != "canceled" {
		t.Fatalf("cancel: %v", cb)
	}
	select {
	case s := <-followDone:
		if !strings.Contains(s, "tag=sleep-30") || !strings.Contains(s, "canceled") {
			t.Fatalf("followed log:\n%s", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("log follow did not end with the build")
	}
	// The queued one runs next.
	if b := c.waitBuild(q2, 60*time.Second, "succeeded", "failed"); b["status"] != "succeeded" {
		t.Fatalf("queued build: %v", b)
	}

	// ---- swap appbuild.v1 during a build: the build finishes
	sw := startBuild(newVersion("sleep-4"), "huawei", "xiaomi")
	c.waitBuild(sw, 30*time.Second, "running")
	so2 := h.Compile(t, "plugins/appbuild")
	if so2 == so {
		t.Fatalf("pcompile reused the file name %s", so)
	}
	h.LoadAPI(t, "appbuild.v1", so2)
	swb := c.waitBuild(sw, 90*time.Second, "succeeded", "failed", "canceled")
	if swb["status"] != "succeeded" {
		t.Fatalf("build across a swap: %v", swb)
	}
	swPkg := swb["results"].([]any)[0].(map[string]any)["artifacts"].([]any)[0].(map[string]any)["file"].(string)

	// ---- restart: records and artifacts survive; a build running at the
	// stop is recorded as failed with the reason, not left running.
	rb := startBuild(newVersion("sleep-30"), "huawei")
	c.waitBuild(rb, 30*time.Second, "running")
	h.Restart(t)
	got := c.waitBuild(rb, 30*time.Second, "failed", "succeeded", "canceled", "running")
	if got["status"] != "failed" || !strings.Contains(got["reason"].(string), "interrupted") {
		t.Fatalf("build running at restart: %v", got)
	}
	if l := list(t, c.do("GET", "/api/app/"+appID+"/build", "", 200)); len(l) != 6 {
		t.Fatalf("history after restart has %d builds, want 6", len(l))
	}
	resp, again := c.raw("GET", firstPath, "")
	if resp.StatusCode != 200 || !bytes.Equal(again, firstData) {
		t.Fatalf("artifact after restart: %d", resp.StatusCode)
	}
	// A host killed outright: after it comes back, the build is failed as
	// interrupted and the recipe it left running is killed.
	kb := startBuild(newVersion("sleep-31.7"), "huawei")
	c.waitBuild(kb, 30*time.Second, "running")
	waitProc(t, kb, "sleep 31.7")
	syscall.Kill(h.Pid(), syscall.SIGKILL)
	h.Restart(t)
	got = c.waitBuild(kb, 30*time.Second, "failed", "succeeded", "canceled")
	if got["status"] != "failed" || !strings.Contains(got["reason"].(string), "interrupted by restart") ||
		!strings.Contains(got["reason"].(string), "killed") {
		t.Fatalf("build running when the host was killed: %v", got)
	}
	if left := procs.WithEnv("APPBUILD_BUILD_ID=" + kb); len(left) != 0 {
		t.Fatalf("recipe of the killed host still running: %v", left)
	}
	// And builds still work after the restart.
	if b := c.waitBuild(startBuild(verID, "and-a0"), 60*time.Second, "succeeded", "failed"); b["status"] != "succeeded" {
		t.Fatalf("build after restart: %v", b)
	}
	// Retention 3: that was the fourth build with packages, so the first
	// build's packages are gone (its record and log stay).
	resp, b = c.raw("GET", firstPath, "")
	if resp.StatusCode != 410 || !bytes.Contains(b, []byte("retention")) {
		t.Fatalf("package of a build past retention: %d %s", resp.StatusCode, b)
	}
	if u := obj(t, c.do("GET", "/api/build/"+bid+"/download", "", 200)); u["artifacts_removed"] != true {
		t.Fatalf("download urls past retention: %v", u)
	}
	c.do("GET", "/download/"+sw+"/"+swPkg, "", 200)
	c.do("GET", "/api/build/"+bid+"/log", "", 200)

	// ---- soft delete
	c.do("DELETE", "/api/app/"+appID, "", 204)
	c.do("GET", "/api/app/"+appID, "", 404)
	c.do("GET", "/api/app/"+appID+"/version", "", 404)
	if b := c.do("GET", "/api/app", "", 200); strings.TrimSpace(string(b)) != "[]" {
		t.Fatalf("list after delete: %s", b)
	}
	// Its builds' records stay reachable by id.
	c.do("GET", "/api/build/"+bid, "", 200)
}

// waitProc waits (10 s at most) until build id runs a process whose command
// line is cmdline.
func waitProc(t *testing.T, id, cmdline string) {
	t.Helper()
	if ok, ps := procs.Await("APPBUILD_BUILD_ID="+id, cmdline, 10*time.Second); !ok {
		t.Fatalf("build %s runs no %q after 10s: %v", id, cmdline, ps)
	}
}
