package driver

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
	"github.com/plugd/plugd/sdk/sdktest"
)

func buildWebapp(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	out := filepath.Join(dir, "webapp")
	cmd := exec.Command("go", "build", "-o", out, "../e2e/testdata/webapp")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build webapp: %v", err)
	}
	return dir
}

func newDriver(t *testing.T, h *sdktest.Host) *Local {
	d := NewLocal(LocalConfig{Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go,
		DataDir: h.DataDir(), Limits: "auto", Tick: 50 * time.Millisecond, StopGrace: 2 * time.Second})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d
}

func webSpec(dir, version string, n int, env map[string]string) Spec {
	return Spec{App: "hello", Proc: "web", MetaVersion: version, Type: spec.ProcWeb, Cmd: "./webapp", Dir: dir,
		Env: env, NumInstances: n, Service: "hello",
		Health: spec.Health{Path: "/healthz", Interval: 200 * time.Millisecond, Timeout: time.Second, Start: 3 * time.Second, Grace: time.Second}}
}

func pids(st ProcStatus) map[int]bool {
	out := map[int]bool{}
	for _, in := range st.Instances {
		if in.PID > 0 {
			out[in.PID] = true
		}
	}
	return out
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil && sameProcessAny(pid) }

func sameProcessAny(pid int) bool { _, z, err := startTicks(pid); return err == nil && !z }

func waitFor(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !f() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestLocalLifecycle(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	d := newDriver(t, h)
	ctx := context.Background()
	var all []int
	t.Cleanup(func() {
		_ = d.Remove(ctx, "hello", "web")
		for _, p := range all {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})

	if err := d.Apply(ctx, webSpec(dir, "v1", 3, nil), func(s string) { t.Log(s) }); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Status("hello", "web")
	if st.Running != 3 || st.Healthy != 3 || len(pids(st)) != 3 {
		t.Fatalf("after deploy: %+v", st)
	}
	for p := range pids(st) {
		all = append(all, p)
	}
	if n := len(h.Services().Instances("hello")); n != 3 {
		t.Fatalf("registered %d instances, want 3", n)
	}
	// each instance answers on its own port
	for _, in := range st.Instances {
		resp, err := http.Get("http://" + in.Address + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `"instance":"`+in.ID+`"`) {
			t.Fatalf("instance %s answered %s", in.ID, b)
		}
	}

	// scale down: the stopped processes are gone
	before := pids(st)
	if err := d.Apply(ctx, webSpec(dir, "v1", 1, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ = d.Status("hello", "web")
	if st.Running != 1 || len(h.Services().Instances("hello")) != 1 {
		t.Fatalf("after scale down: %+v", st)
	}
	kept := pids(st)
	for p := range before {
		if !kept[p] && alive(p) {
			t.Fatalf("pid %d still alive after scale down", p)
		}
	}

	// crash -> restarted with backoff, new pid, same port
	in := st.Instances[0]
	http.Get("http://" + in.Address + "/crash")
	waitFor(t, "restart after crash", 10*time.Second, func() bool {
		s, _ := d.Status("hello", "web")
		return len(s.Instances) == 1 && s.Instances[0].PID != in.PID && s.Instances[0].PID != 0 && s.Healthy == 1
	})
	st, _ = d.Status("hello", "web")
	if st.Instances[0].Restarts != 1 || !strings.Contains(st.Instances[0].LastExit, "status 3") {
		t.Fatalf("after crash: %+v", st.Instances[0])
	}
	for p := range pids(st) {
		all = append(all, p)
	}

	// a rollout whose health check fails is rolled back; the old instance
	// keeps running untouched
	if err := d.Apply(ctx, webSpec(dir, "v1", 2, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ = d.Status("hello", "web")
	old := pids(st)
	bad := webSpec(dir, "v2", 2, map[string]string{"FAIL_HEALTH": "1"})
	err := d.Apply(ctx, bad, nil)
	if err == nil || !strings.Contains(err.Error(), "rolled back to v1") {
		t.Fatalf("bad rollout: err = %v", err)
	}
	st, _ = d.Status("hello", "web")
	if st.MetaVersion != "v1" || st.Running != 2 || st.Healthy != 2 {
		t.Fatalf("after rollback: %+v", st)
	}
	for p := range old {
		if !pids(st)[p] || !alive(p) {
			t.Fatalf("old pid %d not kept by the rollback: %+v", p, st)
		}
	}

	// a good rollout replaces every instance
	if err := d.Apply(ctx, webSpec(dir, "v3", 2, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ = d.Status("hello", "web")
	for _, in := range st.Instances {
		if in.MetaVersion != "v3" || old[in.PID] {
			t.Fatalf("after rollout: %+v", st)
		}
		all = append(all, in.PID)
	}
	for p := range old {
		if alive(p) {
			t.Fatalf("old pid %d alive after rollout", p)
		}
	}
	for _, r := range h.Services().Instances("hello") {
		if r.Metadata["meta_version"] != "v3" {
			t.Fatalf("registry still has %+v", r)
		}
	}

	// swap: a new driver on the same store adopts the processes
	d2 := newDriver(t, h)
	sctx, cancel := context.WithTimeout(sdk.WithStopReason(ctx, sdk.StopReplaced), 5*time.Second)
	if err := d.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	st2, ok := d2.Status("hello", "web")
	if !ok || len(st2.Instances) != 2 {
		t.Fatalf("new driver sees %+v", st2)
	}
	for _, in := range st2.Instances {
		if !pids(st)[in.PID] || !in.Adopted {
			t.Fatalf("instance not adopted: %+v (before %+v)", in, st)
		}
	}
	waitFor(t, "adopted instances healthy", 5*time.Second, func() bool {
		s, _ := d2.Status("hello", "web")
		return s.Healthy == 2
	})
	// the new driver still restarts crashes of adopted (child) processes
	http.Get("http://" + st2.Instances[0].Address + "/crash")
	waitFor(t, "restart by new driver", 10*time.Second, func() bool {
		s, _ := d2.Status("hello", "web")
		return s.Healthy == 2 && s.Instances[0].PID != st2.Instances[0].PID
	})
	st2, _ = d2.Status("hello", "web")
	for p := range pids(st2) {
		all = append(all, p)
	}
	d = d2
	if err := d2.Remove(ctx, "hello", "web"); err != nil {
		t.Fatal(err)
	}
	for p := range pids(st2) {
		if alive(p) {
			t.Fatalf("pid %d alive after remove", p)
		}
	}
	if n := len(h.Services().Instances("hello")); n != 0 {
		t.Fatalf("%d instances still registered", n)
	}
	// logs were captured
	lines, err := tailLines(filepath.Join(h.DataDir(), "logs", "hello", "web-1.log"), 100)
	if err != nil || !strings.Contains(strings.Join(lines, "\n"), "webapp hello/web-1 v1 starting") {
		t.Fatalf("log of web-1: %v %q", err, lines)
	}
}

func TestMemoryWatchdog(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	// rlimit mode on every machine, cgroups or not: the watchdog is what
	// enforces memory there
	d := NewLocal(LocalConfig{Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go,
		DataDir: h.DataDir(), Limits: "rlimit", Tick: 50 * time.Millisecond, StopGrace: 2 * time.Second})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d.LimitsMode() != "rlimit" {
		t.Fatalf("limits mode %s with limits: rlimit", d.LimitsMode())
	}
	// children inherit our core limit: make it non-zero (within the hard
	// limit) so that the check below means something
	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_CORE, &saved); err == nil && saved.Max > 0 {
		raised := syscall.Rlimit{Cur: min(saved.Max, 1<<20), Max: saved.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_CORE, &raised); err == nil {
			t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_CORE, &saved) })
		}
	}
	ctx := context.Background()
	s := webSpec(dir, "v1", 1, nil)
	s.Memory = 64 << 20
	if err := d.Apply(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(ctx, "hello", "web") })
	st, _ := d.Status("hello", "web")
	if !strings.Contains(st.Limits.Memory, "watchdog") || st.Limits.MemoryBy != ByWatchdog || st.Limits.CPUBy != ByNone {
		t.Fatalf("limits: %+v", st.Limits)
	}
	limits, err := os.ReadFile("/proc/" + strconv.Itoa(st.Instances[0].PID) + "/limits")
	if err != nil || !regexp.MustCompile(`Max core file size\s+0\s+0`).Match(limits) {
		t.Fatalf("core dumps not off: %v\n%s", err, limits)
	}
	http.Get("http://" + st.Instances[0].Address + "/alloc?mb=100")
	waitFor(t, "memory kill", 10*time.Second, func() bool {
		s, _ := d.Status("hello", "web")
		return strings.Contains(s.Instances[0].LastExit, "resident memory")
	})
}

// A swap in the middle of a rollout: the old driver loses ownership and
// stops; the new one rolls the proc back to the previous spec without
// touching the old instances.
func TestSwapDuringRollout(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	d1 := newDriver(t, h)
	ctx := context.Background()
	if err := d1.Apply(ctx, webSpec(dir, "v1", 2, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ := d1.Status("hello", "web")
	old := pids(st)
	bad := webSpec(dir, "v2", 2, map[string]string{"FAIL_HEALTH": "1"})
	bad.Health.Start = 4 * time.Second
	done := make(chan error, 1)
	go func() { done <- d1.Apply(ctx, bad, nil) }()
	waitFor(t, "the rollout's first new instance", 5*time.Second, func() bool {
		s, _ := d1.Status("hello", "web")
		return len(s.Instances) == 3
	})
	d2 := newDriver(t, h)
	t.Cleanup(func() { _ = d2.Remove(ctx, "hello", "web") })
	err := <-done
	t.Logf("old rollout: %v", err)
	if err == nil || !strings.Contains(err.Error(), "taken over") {
		t.Fatalf("old driver's rollout: %v", err)
	}
	sctx, cancel := context.WithTimeout(sdk.WithStopReason(ctx, sdk.StopReplaced), 5*time.Second)
	defer cancel()
	if err := d1.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rollback by the new driver", 10*time.Second, func() bool {
		s, _ := d2.Status("hello", "web")
		return s.MetaVersion == "v1" && len(s.Instances) == 2 && s.Healthy == 2
	})
	st2, _ := d2.Status("hello", "web")
	for p := range old {
		if !pids(st2)[p] || !alive(p) {
			t.Fatalf("old instance %d was not kept: %+v", p, st2)
		}
	}
	for _, r := range h.Services().Instances("hello") {
		if r.Metadata["meta_version"] != "v1" {
			t.Fatalf("registry has %+v", r)
		}
	}
}

// A final unload stops every instance and deregisters it; the desired
// state stays, so the next driver brings the instances back. A shutdown
// leaves them running.
func TestUnloadStopsAndReloadRestores(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	d := newDriver(t, h)
	ctx := context.Background()
	t.Cleanup(func() { _ = d.Remove(ctx, "hello", "web") })
	if err := d.Apply(ctx, webSpec(dir, "v1", 2, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Status("hello", "web")
	first := pids(st)

	// shutdown: kept
	sctx, cancel := context.WithTimeout(sdk.WithStopReason(ctx, sdk.StopShutdown), 5*time.Second)
	defer cancel()
	if err := d.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	for p := range first {
		if !alive(p) {
			t.Fatalf("pid %d ended on a shutdown stop", p)
		}
	}
	d = newDriver(t, h)
	st, _ = d.Status("hello", "web")
	if !sameSet(pids(st), first) {
		t.Fatalf("not adopted after shutdown: %+v", st)
	}
	waitFor(t, "adopted instances registered", 5*time.Second, func() bool { return len(h.Services().Instances("hello")) == 2 })

	// final unload: nothing left running or registered (Stop without a
	// reason in ctx is an unload)
	uctx, cancel2 := context.WithTimeout(ctx, 8*time.Second)
	defer cancel2()
	if err := d.Stop(uctx); err != nil {
		t.Fatal(err)
	}
	for p := range first {
		if alive(p) {
			t.Fatalf("pid %d alive after unload", p)
		}
	}
	if n := len(h.Services().Instances("hello")); n != 0 {
		t.Fatalf("%d instances registered after unload", n)
	}
	if kvs, _ := h.Store().List(ctx, pfxInst); len(kvs) != 0 {
		t.Fatalf("instance records left: %d", len(kvs))
	}

	// loaded again: the desired state brings two new instances back
	d = newDriver(t, h)
	waitFor(t, "instances back after reload", 10*time.Second, func() bool {
		s, _ := d.Status("hello", "web")
		return s.Healthy == 2 && len(s.Instances) == 2
	})
	st, _ = d.Status("hello", "web")
	for p := range pids(st) {
		if first[p] {
			t.Fatalf("pid %d reused after reload: %+v", p, st)
		}
	}
	if n := len(h.Services().Instances("hello")); n != 2 {
		t.Fatalf("%d instances registered after reload", n)
	}
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

// Instance logs are rotated by size; a tail and a follow read across the
// rotation without a gap.
func TestLogRotation(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	d := NewLocal(LocalConfig{Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go,
		DataDir: h.DataDir(), Limits: "auto", Tick: 50 * time.Millisecond, StopGrace: 2 * time.Second,
		LogMaxSize: 8 << 10, LogKeep: 2})
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() { _ = d.Remove(ctx, "hello", "web") })
	if err := d.Apply(ctx, webSpec(dir, "v1", 1, nil), nil); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Status("hello", "web")
	addr, log := st.Instances[0].Address, filepath.Join(h.DataDir(), "logs", "hello", "web-1.log")
	say := func(from, n int) {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/say?tag=line&from=" + strconv.Itoa(from) + "&n=" + strconv.Itoa(n))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	size := func(p string) int64 {
		st, err := os.Stat(p)
		if err != nil {
			return -1
		}
		return st.Size()
	}
	// follow from now on, in the background
	fctx, stop := context.WithCancel(ctx)
	var fol lockedBuffer
	fdone := make(chan error, 1)
	go func() {
		fdone <- d.Logs(fctx, "hello", "web", LogOptions{Instance: "web-1", Tail: 0, Follow: true}, &fol)
	}()
	time.Sleep(300 * time.Millisecond)

	// 12 bytes a line: 1000 lines are 12 KB > 8 KB, so every batch is
	// rotated; the next batch waits for the follower to have read it
	has := func(p, s string) bool {
		b, _ := os.ReadFile(p)
		return strings.Contains(string(b), s)
	}
	for b := 0; b < 5; b++ {
		say(b*1000, 1000) // synchronous: the log has the lines when it returns
		// (in the log, or in log.1 when a rotation tick came in between)
		last := fmt.Sprintf("line %06d\n", b*1000+999)
		if !has(log, last) && !has(log+".1", last) {
			t.Fatalf("after 1000 lines, neither the log (%d bytes) nor log.1 has %q", size(log), last)
		}
		waitFor(t, "rotation", 5*time.Second, func() bool { return size(log) < 8<<10 })
		waitFor(t, "the follower to read "+last, 5*time.Second, func() bool { return strings.Contains(fol.String(), last) })
	}
	say(5000, 10) // the current file has 10 lines
	if size(log+".3") != -1 || size(log+".2") <= 0 {
		t.Fatalf("log_keep 2: sizes %d %d %d", size(log+".1"), size(log+".2"), size(log+".3"))
	}
	if n := size(log); n > 8<<10 {
		t.Fatalf("current log %d bytes > 8K", n)
	}
	// tail 300 spans the current file and the rotated ones, in order
	var buf strings.Builder
	if err := d.Logs(ctx, "hello", "web", LogOptions{Instance: "web-1", Tail: 300}, &buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 300 {
		t.Fatalf("tail 300 gave %d lines", len(lines))
	}
	for i, l := range lines {
		if want := fmt.Sprintf("line %06d", 5010-300+i); l != want {
			t.Fatalf("tail line %d: %q, want %q", i, l, want)
		}
	}
	// the follower saw every line once, in order, across the rotations
	waitFor(t, "the follower to read the last line", 5*time.Second, func() bool { return strings.Contains(fol.String(), "line 005009\n") })
	stop()
	if err := <-fdone; err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSpace(fol.String()), "\n")
	var seen []string
	for _, l := range got {
		if strings.HasPrefix(l, "line ") {
			seen = append(seen, l)
		}
	}
	if len(seen) != 5010 {
		t.Fatalf("follow saw %d lines, want 5010 (first %q, last %q)", len(seen), seen[0], seen[len(seen)-1])
	}
	for i, l := range seen {
		if want := fmt.Sprintf("line %06d", i); l != want {
			t.Fatalf("follow line %d: %q, want %q", i, l, want)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// When an instance's main process exits, what it left running in its
// process group is killed before the restart (no unsupervised duplicates),
// and in cgroup modes its group is removed.
func TestCrashKillsLeftovers(t *testing.T) {
	dir := buildWebapp(t)
	h := sdktest.NewHost(t, "deploy.v1")
	d := newDriver(t, h)
	ctx := context.Background()
	t.Cleanup(func() { _ = d.Remove(ctx, "hello", "web") })
	s := webSpec(dir, "v1", 1, nil)
	s.Cmd = "sleep 300 & exec ./webapp"
	if err := d.Apply(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Status("hello", "web")
	leader := st.Instances[0].PID
	group := func(pgid int) []int {
		var out []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == pgid {
				continue
			}
			if g, err := syscall.Getpgid(pid); err == nil && g == pgid && sameProcessAny(pid) {
				out = append(out, pid)
			}
		}
		return out
	}
	waitFor(t, "the sleep in the instance's group", 5*time.Second, func() bool { return len(group(leader)) == 1 })
	left := group(leader)[0]
	t.Cleanup(func() { _ = syscall.Kill(left, syscall.SIGKILL) })
	d.mu.Lock()
	cgs := d.procs[pkey("hello", "web")].insts[st.Instances[0].ID].rec.Cgroups
	d.mu.Unlock()
	http.Get("http://" + st.Instances[0].Address + "/crash")
	waitFor(t, "restart", 10*time.Second, func() bool {
		s, _ := d.Status("hello", "web")
		return s.Healthy == 1 && s.Instances[0].PID != leader
	})
	waitFor(t, "the leftover sleep to be killed", 5*time.Second, func() bool { return !alive(left) })
	for _, c := range cgs {
		if _, err := os.Stat(c); err == nil {
			t.Fatalf("cgroup %s of the crashed run still exists", c)
		}
	}
	if (d.LimitsMode() == ModeRlimit) != (len(cgs) == 0) {
		t.Fatalf("mode %s with cgroups %v", d.LimitsMode(), cgs)
	}
}

// Stopped instances keep their logs up to keepStoppedLogs (newest first);
// live instances keep theirs whatever their age.
func TestPruneLogsKeepsLiveAndNewest(t *testing.T) {
	h := sdktest.NewHost(t, "deploy.v1")
	d := NewLocal(LocalConfig{Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go, DataDir: h.DataDir()})
	dir := filepath.Join(h.DataDir(), "logs", "shop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	touch := func(name string, age time.Duration) {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old.Add(age), old.Add(age))
	}
	touch("web-1.log", 0) // live, oldest of all
	d.procs = map[string]*proc{"shop/web": {rec: procRecord{Spec: Spec{App: "shop", Proc: "web"}}, insts: map[string]*inst{"web-1": {}}}}
	for i := 2; i <= keepStoppedLogs+6; i++ {
		touch(fmt.Sprintf("web-%d.log", i), time.Duration(i)*time.Second)
		touch(fmt.Sprintf("web-%d.log.1", i), time.Duration(i)*time.Second)
	}
	d.pruneLogs("shop")
	for i := 1; i <= keepStoppedLogs+6; i++ {
		_, err := os.Stat(filepath.Join(dir, fmt.Sprintf("web-%d.log", i)))
		kept := err == nil
		want := i == 1 || i > 6 // live, or among the newest keepStoppedLogs stopped
		if kept != want {
			t.Errorf("web-%d.log kept=%v, want %v", i, kept, want)
		}
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("web-%d.log.1", i))); i > 1 && (err == nil) != want {
			t.Errorf("web-%d.log.1 kept=%v, want %v", i, err == nil, want)
		}
	}
}
