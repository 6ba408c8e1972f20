// Package e2e drives the deploy plugin in the real plugd host, with real
// processes: a tiny HTTP server (testdata/webapp) deployed as an app.
package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/internal/testhost"
)

const (
	alice = "alice-token-0001"
	bob   = "bob-token-00002"
	root  = "root-token-0003"
)

type env struct {
	t      *testing.T
	h      *testhost.Host
	gw     string
	webapp []byte
}

func (e *env) do(method, path, token string, body any) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.h.URL+"/deploy/v1"+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("access-token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// want does a request and fails unless the status is code; it decodes the
// JSON answer into out when given.
func (e *env) want(code int, method, path, token string, body, out any) []byte {
	e.t.Helper()
	got, b := e.do(method, path, token, body)
	if got != code {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, got, code, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return b
}

type opRef struct {
	Operation string `json:"operation"`
}

type operation struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Error string `json:"error"`
	Procs map[string]struct {
		State string `json:"state"`
		Error string `json:"error"`
	} `json:"procs"`
	Messages []string `json:"messages"`
}

// op waits for the operation answered by a 202 and returns it finished.
func (e *env) op(method, path, token string, body any) operation {
	e.t.Helper()
	var ref opRef
	e.want(http.StatusAccepted, method, path, token, body, &ref)
	if ref.Operation == "" {
		e.t.Fatalf("%s %s: no operation id", method, path)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		var op operation
		e.want(200, "GET", "/api/v1/operations/"+ref.Operation, token, nil, &op)
		if op.State == "succeeded" || op.State == "failed" {
			return op
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("operation %s still %s after 90s: %+v", ref.Operation, op.State, op)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *env) opOK(method, path, token string, body any) operation {
	e.t.Helper()
	op := e.op(method, path, token, body)
	if op.State != "succeeded" {
		e.t.Fatalf("%s %s: operation %s: %s\n%s", method, path, op.State, op.Error, strings.Join(op.Messages, "\n"))
	}
	return op
}

type instance struct {
	ID          string `json:"id"`
	PID         int    `json:"pid"`
	Port        int    `json:"port"`
	Address     string `json:"address"`
	MetaVersion string `json:"meta_version"`
	State       string `json:"state"`
	Healthy     bool   `json:"healthy"`
	Restarts    int    `json:"restarts"`
	LastExit    string `json:"last_exit"`
	Adopted     bool   `json:"adopted"`
}

type procView struct {
	ProcName     string `json:"procname"`
	Deployed     bool   `json:"deployed"`
	State        string `json:"state"`
	NumInstances int    `json:"num_instances"`
	Running      int    `json:"running"`
	Healthy      int    `json:"healthy"`
	Memory       string `json:"memory"`
	Limits       *struct {
		Mode     string `json:"mode"`
		Memory   string `json:"memory"`
		CPU      string `json:"cpu"`
		MemoryBy string `json:"memory_enforced_by"`
		CPUBy    string `json:"cpu_enforced_by"`
	} `json:"limits"`
	Instances []instance `json:"instances"`
}

type appView struct {
	AppName     string     `json:"appname"`
	AppType     string     `json:"apptype"`
	MetaVersion string     `json:"meta_version"`
	State       string     `json:"state"`
	Procs       []procView `json:"procs"`
}

func (e *env) app(name string) appView {
	e.t.Helper()
	var a appView
	e.want(200, "GET", "/api/v1/apps/"+name+"/", alice, nil, &a)
	return a
}

func (e *env) proc(app, name string) procView {
	e.t.Helper()
	var p procView
	e.want(200, "GET", "/api/v1/apps/"+app+"/procs/"+name, alice, nil, &p)
	return p
}

// procs lists the live processes running a release of app (their
// executable is under the app's release directory).
func (e *env) procs(app string) map[int]bool {
	dir := filepath.Join(e.h.DataDir, "plugins", "deploy", "releases", app) + "/"
	out := map[int]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || !strings.HasPrefix(exe, dir) {
			continue
		}
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:])); len(f) > 0 && f[0] == "Z" {
				continue
			}
		}
		out[pid] = true
	}
	return out
}

func (e *env) waitProcs(app string, n int) map[int]bool {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		p := e.procs(app)
		if len(p) == n {
			return p
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: %d processes, want %d", app, len(p), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pidsOf(p procView) map[int]bool {
	out := map[int]bool{}
	for _, in := range p.Instances {
		out[in.PID] = true
	}
	return out
}

func sameSet(a, b map[int]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func (e *env) version(app, mv, specYAML string) {
	e.t.Helper()
	e.want(http.StatusCreated, "POST", "/api/v1/repos/"+app+"/versions/", alice, map[string]any{
		"meta_version": mv, "spec": specYAML,
		"files": map[string]string{"bin/webapp": base64.StdEncoding.EncodeToString(e.webapp)},
	}, nil)
}

func (e *env) viaGateway(path string) (int, map[string]any) {
	resp, err := http.Get(e.gw + path)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func mv(n int) string { return fmt.Sprintf("17000000%02d-%040x", n, n) }

const helloSpec = `appname: hello
web:
  cmd: ./bin/webapp
  num_instances: 2
  healthcheck:
    path: /healthz
    start: 10s
    interval: 500ms
  env:
    - GREETING=hi
worker.bg:
  cmd: ./bin/webapp
  env: [WORKER=1]
  healthcheck: {grace: 300ms}
`

func TestDeploy(t *testing.T) {
	src := testhost.RepoRoot(t) // not "root": that is the admin's token
	bin := filepath.Join(t.TempDir(), "webapp")
	build := exec.Command("go", "build", "-o", bin, "./plugins/deploy/e2e/testdata/webapp")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build webapp: %v\n%s", err, out)
	}
	webapp, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	gwPort := testhost.FreePort(t)
	h := testhost.Start(t, testhost.Options{Config: fmt.Sprintf(`plugins:
  deploy:
    users:
      - {name: alice, token: %s}
      - {name: bob, token: %s}
      - {name: root, token: %s}
    admins: [root]
    stop_grace: 2s
    log_max_size: 64K
    log_keep: 2
  gateway:
    listen: 127.0.0.1:%d
`, alice, bob, root, gwPort)})
	e := &env{t: t, h: h, gw: fmt.Sprintf("http://127.0.0.1:%d", gwPort), webapp: webapp}
	// no process may outlive the test: undeploy while the host runs, then
	// kill whatever is left of our releases (cleanups run last-in first)
	t.Cleanup(func() {
		for pid := range e.procs("") {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	deployFile := h.Compile(t, "plugins/deploy")
	h.LoadAPI(t, "deploy.v1", deployFile)
	h.LoadAPI(t, "gateway.v1", h.Compile(t, "plugins/gateway"))
	t.Cleanup(func() {
		for _, a := range []string{"hello", "client", "limits"} {
			if code, _ := e.do("DELETE", "/api/v1/apps/"+a, root, nil); code == 202 {
				time.Sleep(100 * time.Millisecond)
			}
		}
		deadline := time.Now().Add(20 * time.Second)
		for len(e.procs("")) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
	})

	// --- auth and repos ---
	e.want(401, "GET", "/api/v1/repos/", "", nil, nil)
	e.want(401, "GET", "/api/v1/repos/", "wrong-token-123", nil, nil)
	var repo struct {
		AppName     string `json:"appname"`
		Maintainers []struct {
			Username, Role string
		} `json:"maintainers"`
	}
	e.want(201, "POST", "/api/v1/repos/", alice, map[string]string{"appname": "hello"}, &repo)
	if repo.AppName != "hello" || len(repo.Maintainers) != 1 || repo.Maintainers[0].Username != "alice" || repo.Maintainers[0].Role != "admin" {
		t.Fatalf("registered repo: %+v", repo)
	}
	e.want(409, "POST", "/api/v1/repos", alice, map[string]string{"appname": "hello"}, nil)
	e.want(400, "POST", "/api/v1/repos", alice, map[string]string{"appname": "Bad Name"}, nil)
	var repos []map[string]any
	e.want(200, "GET", "/api/v1/repos", bob, nil, &repos)
	if len(repos) != 1 {
		t.Fatalf("repos: %v", repos)
	}
	e.want(200, "GET", "/api/v1/repos/hello", bob, nil, nil)
	e.want(404, "GET", "/api/v1/repos/nope/", bob, nil, nil)
	var role map[string]any
	e.want(200, "GET", "/api/v1/repos/hello/roles/", alice, nil, &role)
	if role["role"] != "admin" || role["username"] != "alice" {
		t.Fatalf("alice's role: %v", role)
	}
	e.want(404, "GET", "/api/v1/repos/hello/roles/", bob, nil, nil)
	e.want(404, "GET", "/api/v1/repos/hello/roles/bob/", alice, nil, nil)
	e.want(200, "GET", "/api/v1/repos/hello/roles/root", alice, nil, &role)
	if role["role"] != "admin" || role["global_admin"] != true {
		t.Fatalf("root's role: %v", role)
	}
	// bob is no maintainer: reads yes, changes no
	e.want(403, "POST", "/api/v1/repos/hello/versions/", bob, map[string]any{"spec": helloSpec}, nil)
	e.want(403, "POST", "/api/v1/repos/hello/maintainers/", bob, map[string]string{"username": "bob", "role": "admin"}, nil)
	e.want(400, "POST", "/api/v1/repos/hello/maintainers/", alice, map[string]string{"username": "mallory", "role": "normal"}, nil)
	e.want(400, "POST", "/api/v1/repos/hello/maintainers/", alice, map[string]string{"username": "bob", "role": "owner"}, nil)
	e.want(201, "POST", "/api/v1/repos/hello/maintainers/", alice, map[string]string{"username": "bob", "role": "normal"}, nil)
	var ms []map[string]any
	e.want(200, "GET", "/api/v1/repos/hello/maintainers", bob, nil, &ms)
	if len(ms) != 2 {
		t.Fatalf("maintainers: %v", ms)
	}
	e.want(200, "GET", "/api/v1/repos/hello/maintainers/bob/", bob, nil, &role)
	if role["role"] != "normal" {
		t.Fatalf("bob: %v", role)
	}
	e.want(200, "GET", "/api/v1/repos/hello/roles/", bob, nil, &role)
	if role["role"] != "normal" {
		t.Fatalf("bob's role: %v", role)
	}
	// a normal maintainer cannot manage maintainers; the last admin stays
	e.want(403, "DELETE", "/api/v1/repos/hello/maintainers/alice/", bob, nil, nil)
	e.want(409, "DELETE", "/api/v1/repos/hello/maintainers/alice/", alice, nil, nil)

	// --- versions ---
	e.version("hello", mv(1), helloSpec)
	e.want(409, "POST", "/api/v1/repos/hello/versions/", alice, map[string]any{"meta_version": mv(1), "spec": helloSpec}, nil)
	e.want(400, "POST", "/api/v1/repos/hello/versions/", alice, map[string]any{"meta_version": "v1", "spec": helloSpec}, nil)
	e.want(400, "POST", "/api/v1/repos/hello/versions/", alice, map[string]any{"spec": "web: {}"}, nil)
	var vers []map[string]any
	e.want(200, "GET", "/api/v1/repos/hello/versions", alice, nil, &vers)
	if len(vers) != 1 || vers[0]["meta_version"] != mv(1) {
		t.Fatalf("versions: %v", vers)
	}

	// --- deploy ---
	e.want(401, "POST", "/api/v1/apps/", "bob-token-00002x", map[string]string{"appname": "hello"}, nil)
	e.opOK("POST", "/api/v1/apps/", bob, map[string]string{"appname": "hello"})
	e.want(409, "POST", "/api/v1/apps/", alice, map[string]string{"appname": "hello"}, nil)
	a := e.app("hello")
	if a.State != "running" || a.MetaVersion != mv(1) || a.AppType != "app" || len(a.Procs) != 2 {
		t.Fatalf("after deploy: %+v", a)
	}
	web := e.proc("hello", "web")
	if web.Running != 2 || web.Healthy != 2 || len(web.Instances) != 2 {
		t.Fatalf("web: %+v", web)
	}
	pr := e.waitProcs("hello", 3) // 2 web + 1 worker
	for pid := range pidsOf(web) {
		if !pr[pid] {
			t.Fatalf("web pid %d is not a running webapp process (%v)", pid, pr)
		}
	}
	// each instance answers on its own PORT with its own id
	for _, in := range web.Instances {
		resp, err := http.Get("http://" + in.Address + "/")
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if m["instance"] != in.ID || m["version"] != mv(1) {
			t.Fatalf("instance %s answered %v", in.ID, m)
		}
	}
	var apps []appView
	e.want(200, "GET", "/api/v1/apps?apptype=app", alice, nil, &apps)
	if len(apps) != 1 {
		t.Fatalf("apps: %+v", apps)
	}
	e.want(200, "GET", "/api/v1/apps/?apptype=resource", alice, nil, &apps)
	if len(apps) != 0 {
		t.Fatalf("resource apps: %+v", apps)
	}
	e.want(400, "GET", "/api/v1/apps/?apptype=nope", alice, nil, nil)
	e.want(200, "GET", "/api/v1/apps/?apptype=service", alice, nil, &apps)
	if len(apps) != 0 {
		t.Fatalf("service apps: %+v", apps)
	}
	e.want(200, "GET", "/api/v1/apps/", bob, nil, &apps)
	if len(apps) != 1 || apps[0].AppName != "hello" || apps[0].State != "running" {
		t.Fatalf("all apps: %+v", apps)
	}
	var procList []procView
	e.want(200, "GET", "/api/v1/apps/hello/procs/", alice, nil, &procList)
	if len(procList) != 2 || procList[0].ProcName != "bg" || procList[1].ProcName != "web" || procList[1].Healthy != 2 || procList[0].Running != 1 {
		t.Fatalf("procs: %+v", procList)
	}
	e.want(200, "GET", "/api/v1/apps/hello/procs", alice, nil, &procList)
	var ver map[string]any
	e.want(200, "GET", "/api/v1/repos/hello/versions/"+mv(1)+"/", alice, nil, &ver)
	if ver["meta_version"] != mv(1) || ver["spec"] != helloSpec {
		t.Fatalf("version: %v", ver)
	}
	e.want(404, "GET", "/api/v1/repos/hello/versions/"+mv(9), alice, nil, nil)
	var ops []operation
	e.want(200, "GET", "/api/v1/apps/hello/operations/", alice, nil, &ops)
	if len(ops) != 1 || ops[0].State != "succeeded" || ops[0].Procs["web"].State != "succeeded" {
		t.Fatalf("operations: %+v", ops)
	}
	var one operation
	e.want(200, "GET", "/api/v1/apps/hello/operations/"+ops[0].ID, alice, nil, &one)
	if one.ID != ops[0].ID || one.State != "succeeded" {
		t.Fatalf("operation: %+v", one)
	}
	e.want(404, "GET", "/api/v1/apps/hello/operations/nope", alice, nil, nil)

	// --- through the gateway ---
	seen := map[string]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for len(seen) < 2 && time.Now().Before(deadline) {
		if code, m := e.viaGateway("/hello/x"); code == 200 && m["app"] == "hello" {
			seen[m["instance"].(string)] = true
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(seen) != 2 {
		t.Fatalf("gateway reached instances %v, want both", seen)
	}

	// --- procs ---
	e.want(409, "POST", "/api/v1/apps/hello/procs/", alice, map[string]string{"procname": "web"}, nil)
	e.want(400, "POST", "/api/v1/apps/hello/procs/", alice, map[string]string{"procname": "nope"}, nil)
	e.want(400, "PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"num_instances": 2, "cpu": 1, "memory": "64M"}, nil)
	e.want(400, "PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"num_instances": -1}, nil)
	e.want(400, "PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"memory": "lots"}, nil)
	e.want(404, "PATCH", "/api/v1/apps/hello/procs/nope/", alice, map[string]any{"num_instances": 1}, nil)

	e.opOK("PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"num_instances": 5})
	if web = e.proc("hello", "web"); web.Healthy != 5 || web.NumInstances != 5 {
		t.Fatalf("scaled up: %+v", web)
	}
	e.waitProcs("hello", 6)
	e.opOK("PATCH", "/api/v1/apps/hello/procs/web", alice, map[string]any{"num_instances": 1})
	e.waitProcs("hello", 2)
	if web = e.proc("hello", "web"); web.Healthy != 1 || len(web.Instances) != 1 {
		t.Fatalf("scaled down: %+v", web)
	}

	// resize replaces the instance; the proc says how limits are enforced
	before := pidsOf(web)
	e.opOK("PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"cpu": 0.5, "memory": "256M"})
	web = e.proc("hello", "web")
	if web.Memory != "256M" || web.Limits == nil || (web.Limits.Mode != "rlimit" && web.Limits.Mode != "cgroup-v1" && web.Limits.Mode != "cgroup-v2") || web.Healthy != 1 {
		t.Fatalf("resized: %+v", web)
	}
	for pid := range pidsOf(web) {
		if before[pid] {
			t.Fatalf("resize kept pid %d", pid)
		}
	}
	t.Logf("limits: %+v", *web.Limits)

	// crash -> restarted
	crashed := web.Instances[0]
	crash(crashed.Address)
	deadline = time.Now().Add(15 * time.Second)
	for {
		web = e.proc("hello", "web")
		if len(web.Instances) == 1 && web.Instances[0].PID != crashed.PID && web.Instances[0].Healthy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not restarted after crash: %+v", web)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if web.Instances[0].Restarts != 1 || !strings.Contains(web.Instances[0].LastExit, "status 3") {
		t.Fatalf("after crash: %+v", web.Instances[0])
	}
	e.waitProcs("hello", 2)

	// logs
	_, logs := e.do("GET", "/api/v1/apps/hello/procs/web/logs?tail=50", alice, nil)
	if !strings.Contains(string(logs), "crashing on request") || !strings.Contains(string(logs), "webapp hello/web-") {
		t.Fatalf("logs: %s", logs)
	}
	req, _ := http.NewRequest("GET", h.URL+"/deploy/v1/api/v1/apps/hello/procs/web/logs?tail=0&follow=true", nil)
	req.Header.Set("access-token", alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	second := web.Instances[0]
	crash(second.Address) // writes a line, then restarts
	got := make(chan string, 1)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 4096)
		for !strings.Contains(buf.String(), "crashing on request") {
			n, err := resp.Body.Read(b)
			buf.Write(b[:n])
			if err != nil {
				break
			}
		}
		got <- buf.String()
	}()
	select {
	case s := <-got:
		if !strings.Contains(s, "crashing on request") {
			t.Fatalf("follow: %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not deliver the new line")
	}
	resp.Body.Close()
	// The supervisor sees the exit a moment after the crash: until then
	// the instance still looks healthy, and the settle check below could
	// pass before the restart it has to wait for.
	noticed := time.Now().Add(15 * time.Second)
	for {
		web = e.proc("hello", "web")
		restarted := false
		for _, in := range web.Instances {
			restarted = restarted || in.ID == second.ID && in.Restarts > second.Restarts
		}
		if restarted {
			break
		}
		if time.Now().After(noticed) {
			t.Fatalf("the second crash of %s was not noticed: %+v", second.ID, web)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.opOK("PATCH", "/api/v1/apps/hello/procs/web/", alice, map[string]any{"num_instances": 2})

	// --- rollout ---
	// The crashed instance must be back and healthy before its pid is taken
	// as the one a rollback has to keep.
	settled := func(p procView) bool {
		if p.Healthy != 2 || p.Running != 2 || len(p.Instances) != 2 {
			return false
		}
		for _, in := range p.Instances {
			if !in.Healthy || in.Address == "" {
				return false
			}
		}
		return true
	}
	settle := time.Now().Add(60 * time.Second) // a bound for slow machines, not a speed target
	for web = e.proc("hello", "web"); !settled(web); web = e.proc("hello", "web") {
		if time.Now().After(settle) {
			t.Fatalf("web did not settle at 2 healthy instances after the crash: %+v", web)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if web = e.proc("hello", "web"); !settled(web) {
		t.Fatalf("web unsettled a second after settling: %+v", web)
	}
	v1pids := pidsOf(web)
	// logs are rotated by size (log_max_size 64K) and a tail reads across
	// the rotation
	logFile := filepath.Join(h.DataDir, "plugins", "deploy", "logs", "hello", web.Instances[0].ID+".log")
	say := func(from, n int) {
		resp, err := http.Get(fmt.Sprintf("http://%s/say?tag=line&from=%d&n=%d", web.Instances[0].Address, from, n))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	say(0, 8000) // 96 KB
	deadline = time.Now().Add(10 * time.Second)
	for st, err := os.Stat(logFile); err != nil || st.Size() > 64<<10; st, err = os.Stat(logFile) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not rotated: %v", logFile, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The rotation may catch the 96 KB mid-write, so .1 holds the start of
	// it (at least the 64K that triggered it) and the live log the rest.
	if b, err := os.ReadFile(logFile + ".1"); err != nil || len(b) < 64<<10 || !bytes.Contains(b, []byte("line 000000\n")) {
		t.Fatalf("rotated log: %d bytes, %v", len(b), err)
	}
	say(8000, 100)
	_, logs = e.do("GET", "/api/v1/apps/hello/procs/web/logs?tail=200&instance="+web.Instances[0].ID, alice, nil)
	tailed := strings.Split(strings.TrimSpace(string(logs)), "\n")
	if len(tailed) != 200 || tailed[0] != "line 007900" || tailed[199] != "line 008099" {
		t.Fatalf("tail across the rotation: %d lines, %q … %q", len(tailed), tailed[0], tailed[len(tailed)-1])
	}
	for i, l := range tailed {
		if want := fmt.Sprintf("line %06d", 7900+i); l != want {
			t.Fatalf("tail line %d: %q, want %q", i, l, want)
		}
	}

	bad := strings.Replace(helloSpec, "- GREETING=hi", "- GREETING=hi\n    - FAIL_HEALTH=1", 1)
	bad = strings.Replace(bad, "start: 10s", "start: 2s", 1)
	e.version("hello", mv(2), bad)
	op := e.op("PUT", "/api/v1/apps/hello/", alice, map[string]string{"meta_version": mv(2)})
	if op.State != "failed" || !strings.Contains(op.Error, "rolled back") || op.Procs["web"].State != "failed" {
		t.Fatalf("failing rollout: %+v", op)
	}
	a = e.app("hello")
	web = e.proc("hello", "web")
	if a.MetaVersion != mv(1) || !sameSet(pidsOf(web), v1pids) || web.Healthy != 2 {
		t.Fatalf("after rollback: app %+v web %+v (v1 pids %v)", a, web, v1pids)
	}
	e.waitProcs("hello", 3)

	good := strings.Replace(helloSpec, "GREETING=hi", "GREETING=v3", 1)
	e.version("hello", mv(3), good)
	e.opOK("PUT", "/api/v1/apps/hello", bob, map[string]string{"meta_version": mv(3)})
	web = e.proc("hello", "web")
	for _, in := range web.Instances {
		if in.MetaVersion != mv(3) || v1pids[in.PID] || !in.Healthy {
			t.Fatalf("after rollout: %+v", web)
		}
	}
	if a = e.app("hello"); a.MetaVersion != mv(3) || a.State != "running" {
		t.Fatalf("app after rollout: %+v", a)
	}
	e.waitProcs("hello", 3)
	if _, m := e.viaGateway("/hello/"); m["version"] != mv(3) {
		t.Fatalf("gateway answered %v after rollout", m)
	}
	// rolling back is a PUT of the older version
	e.opOK("PUT", "/api/v1/apps/hello/", alice, map[string]string{"meta_version": mv(1)})
	if a = e.app("hello"); a.MetaVersion != mv(1) {
		t.Fatalf("rollback by PUT: %+v", a)
	}
	// bob is removed: he can no longer change the app
	e.want(200, "DELETE", "/api/v1/repos/hello/maintainers/bob", alice, nil, nil)
	e.want(403, "PUT", "/api/v1/apps/hello/", bob, map[string]string{"meta_version": mv(3)}, nil)

	// --- swap deploy.v1: instances untouched ---
	web = e.proc("hello", "web")
	bg := e.proc("hello", "bg")
	beforeSwap := e.waitProcs("hello", 3)
	h.LoadAPI(t, "deploy.v1", h.Compile(t, "plugins/deploy"))
	if now := e.procs("hello"); !sameSet(now, beforeSwap) {
		t.Fatalf("processes changed across the swap: %v -> %v", beforeSwap, now)
	}
	web2 := e.proc("hello", "web")
	if !sameSet(pidsOf(web2), pidsOf(web)) || !sameSet(pidsOf(e.proc("hello", "bg")), pidsOf(bg)) {
		t.Fatalf("instances changed across the swap: %+v -> %+v", web, web2)
	}
	for _, in := range web2.Instances {
		if !in.Adopted || in.Restarts != web.Instances[0].Restarts && in.Restarts != web.Instances[1].Restarts {
			t.Fatalf("not adopted: %+v", in)
		}
	}
	if code, m := e.viaGateway("/hello/"); code != 200 || m["app"] != "hello" {
		t.Fatalf("gateway after swap: %d %v", code, m)
	}
	// the new version supervises: a crash is restarted
	crash(web2.Instances[0].Address)
	deadline = time.Now().Add(15 * time.Second)
	for {
		p := e.proc("hello", "web")
		if p.Healthy == 2 && !pidsOf(p)[web2.Instances[0].PID] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("crash after swap not restarted: %+v", p)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// --- final unload of deploy.v1: every instance ends; loading it again
	// brings the apps back from the stored desired state ---
	beforeUnload := e.waitProcs("hello", 3)
	h.Unload(t, "deploy.v1")
	e.waitProcs("", 0) // counted by pid in /proc, not by asking the plugin
	// and each pid is gone (reaped), not only exiting
	gone := time.Now().Add(15 * time.Second)
	for pid := range beforeUnload {
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(gone) {
				t.Fatalf("pid %d still exists after the unload", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if code, _ := e.viaGateway("/hello/"); code == 200 {
		t.Fatal("gateway still reaches hello after deploy.v1 was unloaded")
	}
	unloaded := time.Now().Add(15 * time.Second)
	for code, _ := e.do("GET", "/", alice, nil); code != 404; code, _ = e.do("GET", "/", alice, nil) {
		if time.Now().After(unloaded) {
			t.Fatalf("deploy.v1 still answers after the unload: %d", code)
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.LoadAPI(t, "deploy.v1", deployFile)
	deadline = time.Now().Add(30 * time.Second)
	for {
		p := e.proc("hello", "web")
		if p.Healthy == 2 && e.proc("hello", "bg").Healthy == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hello not back after reloading deploy.v1: %+v", p)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for pid := range e.waitProcs("hello", 3) {
		if beforeUnload[pid] {
			t.Fatalf("pid %d survived the unload", pid)
		}
	}
	if a := e.app("hello"); a.MetaVersion != mv(1) || a.State != "running" {
		t.Fatalf("app after reload: %+v", a)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		if code, m := e.viaGateway("/hello/"); code == 200 && m["app"] == "hello" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("gateway does not reach hello after deploy.v1 was loaded again")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// --- undeploy and redeploy one proc ---
	e.opOK("DELETE", "/api/v1/apps/hello/procs/bg/", alice, nil)
	e.waitProcs("hello", 2)
	if p := e.proc("hello", "bg"); p.Deployed || p.Running != 0 {
		t.Fatalf("bg after delete: %+v", p)
	}
	e.want(404, "DELETE", "/api/v1/apps/hello/procs/bg/", alice, nil, nil)
	e.opOK("POST", "/api/v1/apps/hello/procs/", alice, map[string]string{"procname": "bg"})
	e.waitProcs("hello", 3)

	// --- resources ---
	e.want(201, "POST", "/api/v1/repos/", alice, map[string]string{"appname": "redis"}, nil)
	e.version("redis", mv(10), "apptype: resource\nweb:\n  cmd: ./bin/webapp\n  healthcheck: /healthz\n")
	e.opOK("POST", "/api/v1/apps/", alice, map[string]string{"appname": "redis"})
	if a := e.app("redis"); a.AppType != "resource" || a.State != "registered" {
		t.Fatalf("resource app: %+v", a)
	}
	if n := len(e.procs("redis")); n != 0 {
		t.Fatalf("a resource runs %d processes itself", n)
	}
	e.want(403, "DELETE", "/api/v1/apps/redis/", alice, nil, nil)
	e.want(201, "POST", "/api/v1/repos/", alice, map[string]string{"appname": "client"}, nil)
	e.version("client", mv(20), "appname: client\nuse_resources:\n  redis:\n    services: [redis]\nweb:\n  cmd: ./bin/webapp\n  healthcheck: /healthz\n")
	e.opOK("POST", "/api/v1/apps", alice, map[string]string{"appname": "client"})
	var insts []appView
	e.want(200, "GET", "/api/v1/resources/redis/instances/", alice, nil, &insts)
	if len(insts) != 1 || insts[0].AppName != "resource.redis.client" || insts[0].AppType != "resource-instance" || insts[0].State != "running" {
		t.Fatalf("resource instances: %+v", insts)
	}
	e.waitProcs("resource.redis.client", 1)
	e.want(200, "GET", "/api/v1/apps?apptype=resource-instance", alice, nil, &apps)
	if len(apps) != 1 {
		t.Fatalf("resource-instance apps: %+v", apps)
	}
	e.opOK("DELETE", "/api/v1/apps/client/", alice, nil)
	e.waitProcs("client", 0)
	e.waitProcs("resource.redis.client", 0)
	e.want(200, "GET", "/api/v1/resources/redis/instances", alice, nil, &insts)
	if len(insts) != 0 {
		t.Fatalf("resource instances after undeploy: %+v", insts)
	}
	e.want(200, "GET", "/api/v1/repos/client/", alice, nil, nil) // registration kept

	// --- resource limits: the mechanism this machine offers, enforced ---
	testLimits(e)
	e.opOK("DELETE", "/api/v1/apps/limits/", alice, nil)
	e.waitProcs("limits", 0)

	// --- host restart: desired state restored, live processes adopted ---
	beforeRestart := e.waitProcs("hello", 3)
	h.Restart(t)
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, b := e.do("GET", "/api/v1/apps/hello/procs/web", alice, nil)
		var p procView
		json.Unmarshal(b, &p)
		if code == 200 && p.Healthy == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restart: %d %s", code, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if now := e.procs("hello"); !sameSet(now, beforeRestart) {
		t.Fatalf("processes changed across the host restart: %v -> %v", beforeRestart, now)
	}
	// the gateway (restored by the host) routes again once re-registered
	deadline = time.Now().Add(15 * time.Second)
	for {
		if code, m := e.viaGateway("/hello/"); code == 200 && m["app"] == "hello" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("gateway does not reach hello after the host restart")
		}
		time.Sleep(100 * time.Millisecond)
	}

	// --- undeploy: no process left, registration kept ---
	e.want(403, "DELETE", "/api/v1/apps/hello/", bob, nil, nil)
	e.opOK("DELETE", "/api/v1/apps/hello/", alice, nil)
	e.waitProcs("hello", 0)
	e.want(404, "GET", "/api/v1/apps/hello/", alice, nil, nil)
	e.want(200, "GET", "/api/v1/repos/hello/", alice, nil, nil)
	if code, _ := e.viaGateway("/hello/"); code == 200 {
		t.Fatal("gateway still reaches hello after undeploy")
	}
}

// crash asks the test webapp at addr to exit. It is a POST: net/http's
// client retries a GET whose kept-alive connection breaks, and the retry
// could crash the restarted instance a second time.
func crash(addr string) {
	if resp, err := http.Post("http://"+addr+"/crash", "text/plain", nil); err == nil {
		resp.Body.Close()
	}
}
