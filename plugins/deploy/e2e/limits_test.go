package e2e

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The machine, read by the test itself (not by the code under test): what
// must enforce an instance's memory and CPU.
type machine struct {
	mode, memBy, cpuBy string
	// cgroup hierarchies: controller ("memory", "cpu", "" for cgroup2) →
	// mount point and the root it shows
	mounts map[string][2]string
}

func readMachine(t *testing.T) machine {
	t.Helper()
	m := machine{mounts: map[string][2]string{}}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if !ok || len(pf) < 5 || len(qf) < 3 {
			continue
		}
		switch qf[0] {
		case "cgroup2":
			m.mounts[""] = [2]string{pf[4], pf[3]}
		case "cgroup":
			for _, o := range strings.Split(qf[2], ",") {
				if o == "memory" || o == "cpu" {
					m.mounts[o] = [2]string{pf[4], pf[3]}
				}
			}
		}
	}
	// can this process make a group? (the host is our child: same groups)
	canMake := func(dir string) bool {
		probe := filepath.Join(dir, fmt.Sprintf("e2e-probe-%d", os.Getpid()))
		if os.Mkdir(probe, 0o755) != nil {
			return false
		}
		return syscall.Rmdir(probe) == nil
	}
	if mnt, ok := m.mounts[""]; ok {
		ctrl, _ := os.ReadFile(filepath.Join(mnt[0], "cgroup.controllers"))
		c := " " + strings.Join(strings.Fields(string(ctrl)), " ") + " "
		if strings.Contains(c, " cpu ") && strings.Contains(c, " memory ") && canMake(mnt[0]) {
			m.mode, m.memBy, m.cpuBy = "cgroup-v2", "cgroup-v2", "cgroup-v2"
			return m
		}
	}
	if mnt, ok := m.mounts["memory"]; ok && canMake(m.ownGroupDir(t, "memory", os.Getpid())) {
		_ = mnt
		m.mode, m.memBy, m.cpuBy = "cgroup-v1", "cgroup-v1", "none"
		if _, ok := m.mounts["cpu"]; ok && canMake(m.ownGroupDir(t, "cpu", os.Getpid())) {
			m.cpuBy = "cgroup-v1"
		}
		return m
	}
	m.mode, m.memBy, m.cpuBy = "rlimit", "rss-watchdog", "none"
	return m
}

// ownGroupDir is the directory of pid's group in the hierarchy of
// controller ("" for cgroup2), from /proc/<pid>/cgroup.
func (m machine) ownGroupDir(t *testing.T, controller string, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	mnt := m.mounts[controller]
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if (controller == "" && f[0] == "0" && f[1] == "") || (controller != "" && contains(strings.Split(f[1], ","), controller)) {
			rel := strings.TrimPrefix(f[2], strings.TrimSuffix(mnt[1], "/"))
			return filepath.Join(mnt[0], rel)
		}
	}
	t.Fatalf("pid %d has no %q group: %s", pid, controller, b)
	return ""
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func readInt(t *testing.T, file, key string) int64 {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if key == "" && len(f) == 1 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			return n
		}
		if len(f) == 2 && f[0] == key {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Fatalf("%s: no %q in %q", file, key, b)
	return 0
}

const limitsSpec = `appname: limits
web:
  cmd: ./bin/webapp
  memory: 48M
  healthcheck: {path: /healthz, interval: 300ms}
worker.spin:
  cmd: ./bin/webapp
  env: [WORKER=1, SPIN=1]
  cpu: 0.1
  healthcheck: {grace: 300ms}
`

// testLimits deploys an app with a memory and a CPU limit and checks that
// deploy reports the mechanism this machine offers and that it enforces
// the limits: an instance going over its memory is killed and restarted;
// with cgroups a busy loop is throttled to its CPU quota.
func testLimits(e *env) {
	t := e.t
	want := readMachine(t)
	t.Logf("machine: limits by %s (memory: %s, cpu: %s)", want.mode, want.memBy, want.cpuBy)
	e.want(201, "POST", "/api/v1/repos/", alice, map[string]string{"appname": "limits"}, nil)
	e.version("limits", mv(30), limitsSpec)
	e.opOK("POST", "/api/v1/apps/", alice, map[string]string{"appname": "limits"})
	e.waitProcs("limits", 2)
	web, spin := e.proc("limits", "web"), e.proc("limits", "spin")
	for _, p := range []procView{web, spin} {
		if p.Limits == nil || p.Limits.Mode != want.mode || p.Limits.MemoryBy != want.memBy || p.Limits.CPUBy != want.cpuBy {
			t.Fatalf("%s reports limits %+v, the machine says %+v", p.ProcName, p.Limits, want)
		}
	}
	t.Logf("web limits: %+v; spin limits: %+v", *web.Limits, *spin.Limits)

	// memory: the instance's own group has the limit (cgroups) ...
	pid := web.Instances[0].PID
	switch want.mode {
	case "cgroup-v1":
		if n := readInt(t, filepath.Join(want.ownGroupDir(t, "memory", pid), "memory.limit_in_bytes"), ""); n != 48<<20 {
			t.Fatalf("memory.limit_in_bytes of pid %d: %d", pid, n)
		}
	case "cgroup-v2":
		if n := readInt(t, filepath.Join(want.ownGroupDir(t, "", pid), "memory.max"), ""); n != 48<<20 {
			t.Fatalf("memory.max of pid %d: %d", pid, n)
		}
	}
	// ... and going over it gets the instance killed and restarted
	c := &http.Client{Timeout: 20 * time.Second}
	if resp, err := c.Get("http://" + web.Instances[0].Address + "/alloc?mb=200"); err == nil {
		resp.Body.Close()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		web = e.proc("limits", "web")
		if in := web.Instances; len(in) == 1 && in[0].PID != pid && in[0].PID != 0 && in[0].Healthy && in[0].Restarts >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance over its memory limit not killed and restarted: %+v", web)
		}
		time.Sleep(100 * time.Millisecond)
	}
	why := web.Instances[0].LastExit
	wantWhy := "out of memory"
	if want.memBy == "rss-watchdog" {
		wantWhy = "resident memory"
	}
	if !strings.Contains(why, wantWhy) {
		t.Fatalf("exit reason %q does not say %q", why, wantWhy)
	}
	if syscall.Kill(pid, 0) == nil {
		if _, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
			t.Fatalf("pid %d over its memory limit still runs", pid)
		}
	}
	t.Logf("memory limit enforced: %s", why)

	// cpu
	spid := spin.Instances[0].PID
	if want.cpuBy == "none" {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", spid))
		if err != nil || !strings.Contains("\x00"+string(env), "\x00GOMAXPROCS=1\x00") {
			t.Fatalf("spin (cpu 0.1, not enforceable here) should get GOMAXPROCS=1: %v %q", err, env)
		}
		return
	}
	dir := want.ownGroupDir(t, "cpu", spid)
	quota := "cpu.cfs_quota_us"
	if want.cpuBy == "cgroup-v2" {
		dir, quota = want.ownGroupDir(t, "", spid), "cpu.max"
	}
	if q, _ := os.ReadFile(filepath.Join(dir, quota)); !strings.HasPrefix(string(q), "10000") {
		t.Fatalf("%s of the spin instance: %q, want 10000 (0.1 cpu)", quota, q)
	}
	deadline = time.Now().Add(15 * time.Second)
	for readInt(t, filepath.Join(dir, "cpu.stat"), "nr_throttled") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a busy loop with cpu 0.1 was never throttled (%s)", dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("cpu throttled: nr_throttled %d in %s", readInt(t, filepath.Join(dir, "cpu.stat"), "nr_throttled"), dir)
}
