package driver

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/plugd/plugd/plugins/deploy/spec"
)

// Enforcement mechanisms, as reported in Limits.
const (
	ModeCgroupV2 = "cgroup-v2"
	ModeCgroupV1 = "cgroup-v1"
	ModeRlimit   = "rlimit"
	// ByWatchdog: the supervisor reads the resident memory every tick and
	// kills an instance above its limit.
	ByWatchdog = "rss-watchdog"
	// ByNone: the limit is recorded but nothing enforces it.
	ByNone = "none"
)

// limiter applies a proc's cpu and memory limits to an instance. An
// instance's cgroups are recorded with it (absolute paths), so that any
// later owner (a swapped-in plugin, a restarted host) can read and remove
// them.
type limiter interface {
	mode() string
	describe(s *Spec) Limits
	// watchdog reports whether the supervisor must enforce memory itself.
	watchdog() bool
	// prepare makes the instance's cgroups and sets cmd up; done runs once
	// cmd has started or failed to start.
	prepare(s *Spec, instID string, cmd *exec.Cmd) (cgroups []string, done func(), err error)
	// place puts a started process into its cgroups. The process is held
	// before its command runs until place returns.
	place(pid int, cgroups []string) error
	// oomKilled tells whether the kernel's OOM killer acted in the cgroups.
	oomKilled(cgroups []string) bool
	// release removes the cgroups of an ended instance (best effort).
	release(cgroups []string)
}

// newLimiter picks, in this order: cgroup v2 with the cpu and memory
// controllers, cgroup v1 (a writable memory hierarchy, plus the cpu one
// when there is one), rlimits. mode "rlimit" forces rlimits; "cgroup"
// means auto but warns when no cgroup is usable. The reason for the choice
// is returned for the logs.
func newLimiter(mode string) (limiter, string) {
	if mode == "rlimit" {
		return rlimitLimiter{}, "limits: rlimit (configured)"
	}
	v2, err2 := newCgroupV2Limiter()
	if err2 == nil {
		return v2, "limits: cgroup v2 at " + v2.base
	}
	v1, err1 := newCgroupV1Limiter()
	if err1 == nil {
		why := "limits: cgroup v1, memory at " + v1.mem
		if v1.cpu != "" {
			why += ", cpu at " + v1.cpu
		} else {
			why += "; cpu not enforced (" + v1.cpuErr + ")"
		}
		return v1, why + " (cgroup v2 unusable: " + err2.Error() + ")"
	}
	why := fmt.Sprintf("cgroup v2 unusable: %v; cgroup v1 unusable: %v", err2, err1)
	if mode == "cgroup" {
		return rlimitLimiter{}, "limits: cgroup requested but " + why + "; falling back to rlimit"
	}
	return rlimitLimiter{}, "limits: rlimit (" + why + ")"
}

// noCgroups is the part of a limiter without cgroups.
type noCgroups struct{}

func (noCgroups) place(int, []string) error { return nil }
func (noCgroups) oomKilled([]string) bool   { return false }
func (noCgroups) release([]string)          {}

// rlimitLimiter runs without cgroups. Memory: RLIMIT_AS cannot be used for
// memory because Go (and JVM) runtimes reserve far more address space than
// they use (a small Go HTTP server fails below ~1G of RLIMIT_AS), so the
// supervisor reads the instance's resident memory every tick and kills it
// above the limit, like the cgroup OOM killer would. CPU: no rlimit caps a
// rate (RLIMIT_CPU is total seconds), so it is not enforced; GOMAXPROCS is
// set as a hint.
type rlimitLimiter struct{ noCgroups }

func (rlimitLimiter) mode() string   { return ModeRlimit }
func (rlimitLimiter) watchdog() bool { return true }

func (rlimitLimiter) describe(s *Spec) Limits {
	l := Limits{Mode: ModeRlimit, CPU: "unlimited", Memory: "unlimited", MemoryBy: ByWatchdog, CPUBy: ByNone}
	if s.Memory > 0 {
		l.Memory = spec.FormatMemory(s.Memory) + " (resident memory watchdog: killed and restarted above it)"
	}
	if s.CPU > 0 {
		l.CPU = fmt.Sprintf("%g cores requested, not enforced without cgroups (GOMAXPROCS=%d set)", s.CPU, gomaxprocs(s.CPU))
	}
	return l
}

func (rlimitLimiter) prepare(s *Spec, _ string, cmd *exec.Cmd) ([]string, func(), error) {
	if s.CPU > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs(s.CPU)))
	}
	return nil, func() {}, nil
}

func gomaxprocs(cpu float64) int { return int(math.Max(1, math.Ceil(cpu))) }

const cfsPeriod = 100000 // µs

func cfsQuota(cpu float64) int64 { return max(1000, int64(cpu*cfsPeriod)) }

var cgNameRe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// cgName is an instance's cgroup name: unique per start, so that counters
// (oom_kill) never carry over from an earlier run.
func cgName(app, instID string) string {
	return cgNameRe.ReplaceAllString(app+"."+instID, "_") + "." + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// removeCgroup removes a cgroup directory; it fails while processes are
// still in it (they may be exiting), so it retries for a moment.
func removeCgroup(dir string) {
	if dir == "" {
		return
	}
	for i := 0; i < 20; i++ {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// oomKills reads the oom_kill counter of a memory.events (v2) or
// memory.oom_control (v1) file.
func oomKills(file string) int64 {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// ---- cgroup v2 ----

// cgroupV2Limiter puts every instance in its own cgroup v2 group under
// base with memory.max and cpu.max set; the process is started in it
// (clone into cgroup).
type cgroupV2Limiter struct{ base string }

func (cgroupV2Limiter) mode() string   { return ModeCgroupV2 }
func (cgroupV2Limiter) watchdog() bool { return false }

func (cgroupV2Limiter) describe(s *Spec) Limits {
	l := Limits{Mode: ModeCgroupV2, CPU: "unlimited", Memory: "unlimited", MemoryBy: ModeCgroupV2, CPUBy: ModeCgroupV2}
	if s.Memory > 0 {
		l.Memory = spec.FormatMemory(s.Memory) + " (memory.max)"
	}
	if s.CPU > 0 {
		l.CPU = fmt.Sprintf("%g cores (cpu.max %d %d)", s.CPU, cfsQuota(s.CPU), cfsPeriod)
	}
	return l
}

func (c cgroupV2Limiter) prepare(s *Spec, instID string, cmd *exec.Cmd) ([]string, func(), error) {
	dir := filepath.Join(c.base, cgName(s.App, instID))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return nil, nil, fmt.Errorf("cgroup: %v", err)
	}
	mem, cpu := "max", fmt.Sprintf("max %d", cfsPeriod)
	if s.Memory > 0 {
		mem = fmt.Sprint(s.Memory)
	}
	if s.CPU > 0 {
		cpu = fmt.Sprintf("%d %d", cfsQuota(s.CPU), cfsPeriod)
	}
	for _, fv := range [][2]string{{"memory.max", mem}, {"memory.swap.max", "0"}, {"cpu.max", cpu}} {
		err := os.WriteFile(filepath.Join(dir, fv[0]), []byte(fv[1]), 0)
		if err != nil && !(fv[0] == "memory.swap.max" && os.IsNotExist(err)) {
			removeCgroup(dir)
			return nil, nil, fmt.Errorf("cgroup: %s: %v", fv[0], err)
		}
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		removeCgroup(dir)
		return nil, nil, fmt.Errorf("cgroup: %v", err)
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = fd
	return []string{dir}, func() { _ = syscall.Close(fd) }, nil
}

// place: the process was cloned into its cgroup already.
func (cgroupV2Limiter) place(int, []string) error { return nil }

func (cgroupV2Limiter) oomKilled(cgs []string) bool {
	for _, d := range cgs {
		if oomKills(filepath.Join(d, "memory.events")) > 0 {
			return true
		}
	}
	return false
}

func (cgroupV2Limiter) release(cgs []string) {
	for _, d := range cgs {
		removeCgroup(d)
	}
}

// newCgroupV2Limiter finds the cgroup2 mount, checks the cpu and memory
// controllers and makes <mount>/plugd-deploy with both delegated.
func newCgroupV2Limiter() (cgroupV2Limiter, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return cgroupV2Limiter{}, err
	}
	ctrl, err := os.ReadFile(filepath.Join(mnt, "cgroup.controllers"))
	if err != nil {
		return cgroupV2Limiter{}, err
	}
	have := strings.Fields(string(ctrl))
	for _, want := range []string{"cpu", "memory"} {
		if !contains(have, want) {
			return cgroupV2Limiter{}, fmt.Errorf("controller %q not available in %s (have %q)", want, mnt, have)
		}
	}
	if err := os.WriteFile(filepath.Join(mnt, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		return cgroupV2Limiter{}, fmt.Errorf("enable controllers in %s: %v", mnt, err)
	}
	base := filepath.Join(mnt, "plugd-deploy")
	if err := os.Mkdir(base, 0o755); err != nil && !os.IsExist(err) {
		return cgroupV2Limiter{}, err
	}
	if err := os.WriteFile(filepath.Join(base, "cgroup.subtree_control"), []byte("+cpu +memory"), 0); err != nil {
		return cgroupV2Limiter{}, fmt.Errorf("enable controllers in %s: %v", base, err)
	}
	return cgroupV2Limiter{base: base}, nil
}

func cgroup2Mount() (string, error) {
	for _, m := range mounts() {
		if m.fstype == "cgroup2" {
			return m.dir, nil
		}
	}
	return "", fmt.Errorf("no cgroup2 mount")
}

// ---- cgroup v1 ----

// cgroupV1Limiter puts every instance in its own group of the v1 memory
// hierarchy (memory.limit_in_bytes, and memory.memsw.limit_in_bytes when
// swap is accounted, so that swap does not extend the limit) and, when the
// cpu hierarchy is mounted and writable, of the cpu one (CFS quota). The
// groups live under <hierarchy>/<the host's own group>/plugd/deploy, so
// the limits of whatever contains the host still apply. v1 cannot start a
// process in a group, so it is written to cgroup.procs right after start,
// while the process waits before running its command.
type cgroupV1Limiter struct {
	mem, cpu string // parents; cpu is "" when the cpu controller is unusable
	cpuErr   string
	memsw    bool
}

func (cgroupV1Limiter) mode() string   { return ModeCgroupV1 }
func (cgroupV1Limiter) watchdog() bool { return false }

func (c cgroupV1Limiter) describe(s *Spec) Limits {
	l := Limits{Mode: ModeCgroupV1, CPU: "unlimited", Memory: "unlimited", MemoryBy: ModeCgroupV1, CPUBy: ModeCgroupV1}
	if s.Memory > 0 {
		l.Memory = spec.FormatMemory(s.Memory) + " (memory.limit_in_bytes"
		if c.memsw {
			l.Memory += ", memory.memsw.limit_in_bytes"
		}
		l.Memory += ")"
	}
	if c.cpu == "" {
		l.CPUBy = ByNone
		if s.CPU > 0 {
			l.CPU = fmt.Sprintf("%g cores requested, not enforced: %s (GOMAXPROCS=%d set)", s.CPU, c.cpuErr, gomaxprocs(s.CPU))
		}
	} else if s.CPU > 0 {
		l.CPU = fmt.Sprintf("%g cores (cpu.cfs_quota_us %d / cpu.cfs_period_us %d)", s.CPU, cfsQuota(s.CPU), cfsPeriod)
	}
	return l
}

func (c cgroupV1Limiter) prepare(s *Spec, instID string, cmd *exec.Cmd) ([]string, func(), error) {
	name := cgName(s.App, instID)
	mdir := filepath.Join(c.mem, name)
	if err := os.Mkdir(mdir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("cgroup v1: %v", err)
	}
	cgs := []string{mdir}
	fail := func(err error) ([]string, func(), error) {
		c.release(cgs)
		return nil, nil, fmt.Errorf("cgroup v1: %v", err)
	}
	if s.Memory > 0 {
		// a fresh group is unlimited: memory first, then memsw (>= memory)
		v := []byte(strconv.FormatInt(s.Memory, 10))
		if err := os.WriteFile(filepath.Join(mdir, "memory.limit_in_bytes"), v, 0); err != nil {
			return fail(err)
		}
		if c.memsw {
			if err := os.WriteFile(filepath.Join(mdir, "memory.memsw.limit_in_bytes"), v, 0); err != nil {
				return fail(err)
			}
		} else {
			// no swap accounting: keep the group from swapping instead
			_ = os.WriteFile(filepath.Join(mdir, "memory.swappiness"), []byte("0"), 0)
		}
	}
	if c.cpu != "" {
		cdir := filepath.Join(c.cpu, name)
		if err := os.Mkdir(cdir, 0o755); err != nil {
			return fail(err)
		}
		cgs = append(cgs, cdir)
		if s.CPU > 0 {
			if err := os.WriteFile(filepath.Join(cdir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cfsPeriod)), 0); err != nil {
				return fail(err)
			}
			if err := os.WriteFile(filepath.Join(cdir, "cpu.cfs_quota_us"), []byte(strconv.FormatInt(cfsQuota(s.CPU), 10)), 0); err != nil {
				return fail(err)
			}
		}
	} else if s.CPU > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", gomaxprocs(s.CPU)))
	}
	return cgs, func() {}, nil
}

func (cgroupV1Limiter) place(pid int, cgs []string) error {
	for _, d := range cgs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("cgroup v1: place %d in %s: %v", pid, d, err)
		}
	}
	return nil
}

func (cgroupV1Limiter) oomKilled(cgs []string) bool {
	for _, d := range cgs {
		b, err := os.ReadFile(filepath.Join(d, "memory.oom_control"))
		if err != nil {
			continue // the cpu group
		}
		if strings.Contains(string(b), "oom_kill ") {
			if oomKills(filepath.Join(d, "memory.oom_control")) > 0 {
				return true
			}
			continue
		}
		// kernels without the oom_kill counter: the limit was hit
		if f, err := os.ReadFile(filepath.Join(d, "memory.failcnt")); err == nil && strings.TrimSpace(string(f)) != "0" {
			return true
		}
	}
	return false
}

func (cgroupV1Limiter) release(cgs []string) {
	for _, d := range cgs {
		removeCgroup(d)
	}
}

// newCgroupV1Limiter finds the v1 memory (required) and cpu (optional)
// hierarchies and makes plugd/deploy under the host's own group in each.
func newCgroupV1Limiter() (cgroupV1Limiter, error) {
	var c cgroupV1Limiter
	mem, err := v1Parent("memory")
	if err != nil {
		return c, err
	}
	c.mem = mem
	_, err = os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes"))
	c.memsw = err == nil
	if cpu, err := v1Parent("cpu"); err == nil {
		c.cpu = cpu
	} else {
		c.cpuErr = err.Error()
	}
	return c, nil
}

// v1Parent makes <mount of controller>/<own group>/plugd/deploy and checks
// that groups can be made in it.
func v1Parent(controller string) (string, error) {
	var mnt, root string
	for _, m := range mounts() {
		if m.fstype == "cgroup" && contains(strings.Split(m.opts, ","), controller) {
			mnt, root = m.dir, m.root
			break
		}
	}
	if mnt == "" {
		return "", fmt.Errorf("no cgroup v1 %s hierarchy mounted", controller)
	}
	// the mount may show a sub-tree (a container's group): the own group
	// is relative to the hierarchy's root
	own := strings.TrimPrefix(ownGroup(controller), strings.TrimSuffix(root, "/"))
	parent := filepath.Join(mnt, own, "plugd", "deploy")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("%s hierarchy: %v", controller, err)
	}
	probe := filepath.Join(parent, fmt.Sprintf("probe-%d", os.Getpid()))
	if err := os.Mkdir(probe, 0o755); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("%s hierarchy: %v", controller, err)
	}
	if err := syscall.Rmdir(probe); err != nil {
		return "", fmt.Errorf("%s hierarchy: %v", controller, err)
	}
	return parent, nil
}

// ownGroup is this process's group in the v1 hierarchy of controller.
func ownGroup(controller string) string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "/"
	}
	for _, l := range strings.Split(string(b), "\n") {
		// id:controller,list:/path
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && contains(strings.Split(f[1], ","), controller) {
			return f[2]
		}
	}
	return "/"
}

type mount struct{ root, dir, fstype, opts string }

// mounts lists the mounts of this process (mountpoint, fs type, super
// options).
func mounts() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent maj:min root mountpoint opts ... - fstype source superopts
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 1 {
			continue
		}
		m := mount{root: unescapeMount(pf[3]), dir: unescapeMount(pf[4]), fstype: qf[0]}
		if len(qf) >= 3 {
			m.opts = qf[2]
		}
		out = append(out, m)
	}
	return out
}

// unescapeMount decodes the octal escapes (\040) of mountinfo paths.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
