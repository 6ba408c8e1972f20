package driver

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"unsafe"

	"github.com/plugd/plugd/plugins/deploy/spec"
)

// limiter applies a proc's cpu and memory limits to an instance.
type limiter interface {
	mode() string
	describe(s *Spec) Limits
	// prepare sets up cmd before it starts; cleanup runs after the
	// instance is gone.
	prepare(s *Spec, instID string, cmd *exec.Cmd) (cleanup func(), err error)
	// watchdog reports whether the supervisor must enforce memory itself.
	watchdog() bool
	// started runs right after the process started.
	started(pid int)
}

// newLimiter picks cgroup v2 when asked or when "auto" finds a writable
// cgroup v2 hierarchy with the cpu and memory controllers, rlimits
// otherwise. The reason for the choice is returned for the logs.
func newLimiter(mode string) (limiter, string) {
	if mode == "rlimit" {
		return rlimitLimiter{}, "limits: rlimit (configured)"
	}
	cg, err := newCgroupLimiter()
	if err == nil {
		return cg, "limits: cgroup v2 at " + cg.base
	}
	if mode == "cgroup" {
		return rlimitLimiter{}, "limits: cgroup v2 requested but unusable (" + err.Error() + "); falling back to rlimit"
	}
	return rlimitLimiter{}, "limits: rlimit (cgroup v2 unusable: " + err.Error() + ")"
}

// rlimitLimiter runs without cgroups. Memory: RLIMIT_AS cannot be used for
// memory because Go (and JVM) runtimes reserve far more address space than
// they use (a small Go HTTP server fails below ~1G of RLIMIT_AS), so the
// supervisor reads the instance's resident memory every tick and kills it
// above the limit, like the cgroup OOM killer would. Core dumps are turned
// off with RLIMIT_CORE. CPU: no rlimit caps a rate (RLIMIT_CPU is total
// seconds), so it is not enforced; GOMAXPROCS is set as a hint.
type rlimitLimiter struct{}

func (rlimitLimiter) mode() string   { return "rlimit" }
func (rlimitLimiter) watchdog() bool { return true }

func (rlimitLimiter) describe(s *Spec) Limits {
	l := Limits{Mode: "rlimit", CPU: "unlimited", Memory: "unlimited"}
	if s.Memory > 0 {
		l.Memory = spec.FormatMemory(s.Memory) + " (resident memory watchdog: killed and restarted above it; RLIMIT_CORE=0)"
	}
	if s.CPU > 0 {
		l.CPU = fmt.Sprintf("%g cores requested, not enforced without cgroup v2 (GOMAXPROCS=%d set)", s.CPU, gomaxprocs(s.CPU))
	}
	return l
}

// started turns core dumps off: a crash-looping instance must not fill the
// disk with cores.
func (rlimitLimiter) started(pid int) {
	lim := syscall.Rlimit{Cur: 0, Max: 0}
	_, _, _ = syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_CORE), uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
}

func (rlimitLimiter) prepare(s *Spec, _ string, cmd *exec.Cmd) (func(), error) {
	if s.CPU > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs(s.CPU)))
	}
	return func() {}, nil
}

func gomaxprocs(cpu float64) int { return int(math.Max(1, math.Ceil(cpu))) }

// cgroupLimiter puts every instance in its own cgroup v2 group under base
// with memory.max and cpu.max set.
type cgroupLimiter struct{ base string }

func (cgroupLimiter) mode() string   { return "cgroup-v2" }
func (cgroupLimiter) watchdog() bool { return false }

func (cgroupLimiter) started(int) {}

func (c cgroupLimiter) describe(s *Spec) Limits {
	l := Limits{Mode: "cgroup-v2", CPU: "unlimited", Memory: "unlimited"}
	if s.Memory > 0 {
		l.Memory = spec.FormatMemory(s.Memory) + " (memory.max)"
	}
	if s.CPU > 0 {
		l.CPU = fmt.Sprintf("%g cores (cpu.max)", s.CPU)
	}
	return l
}

var cgNameRe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

func (c cgroupLimiter) prepare(s *Spec, instID string, cmd *exec.Cmd) (func(), error) {
	dir := filepath.Join(c.base, cgNameRe.ReplaceAllString(s.App+"."+instID, "_"))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("cgroup: %v", err)
	}
	mem, cpu := "max", "max 100000"
	if s.Memory > 0 {
		mem = fmt.Sprint(s.Memory)
	}
	if s.CPU > 0 {
		cpu = fmt.Sprintf("%d 100000", int64(s.CPU*100000))
	}
	for f, v := range map[string]string{"memory.max": mem, "cpu.max": cpu} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0); err != nil {
			_ = os.Remove(dir)
			return nil, fmt.Errorf("cgroup: %s: %v", f, err)
		}
	}
	fd, err := os.Open(dir)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("cgroup: %v", err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(fd.Fd())
	return func() {
		_ = fd.Close()
		_ = os.Remove(dir) // fails while processes remain; harmless
	}, nil
}

// newCgroupLimiter finds the cgroup2 mount, checks the cpu and memory
// controllers and makes <mount>/plugd-deploy with both delegated.
func newCgroupLimiter() (cgroupLimiter, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return cgroupLimiter{}, err
	}
	ctrl, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
	if err != nil {
		return cgroupLimiter{}, err
	}
	have := strings.Fields(string(ctrl))
	for _, want := range []string{"cpu", "memory"} {
		if !contains(have, want) {
			return cgroupLimiter{}, fmt.Errorf("controller %q not available in %s (have %q)", want, mnt, have)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		return cgroupLimiter{}, fmt.Errorf("enable controllers in %s: %v", mnt, err)
	}
	base := filepath.Join(mnt, "plugd-deploy")
	if err := os.Mkdir(base, 0o755); err != nil && !os.IsExist(err) {
		return cgroupLimiter{}, err
	}
	if err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		return cgroupLimiter{}, fmt.Errorf("enable controllers in %s: %v", base, err)
	}
	return cgroupLimiter{base: base}, nil
}

func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source opts
		l := sc.Text()
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return pf[4], nil
		}
	}
	return "", fmt.Errorf("no cgroup2 mount")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
