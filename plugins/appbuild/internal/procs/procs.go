// Package procs reads and signals processes through Linux /proc: the
// appbuild plugin uses it to recognize a dead host process, to find the
// recipe processes of a build by their environment and to kill them.
package procs

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a process that had not exited when it was listed.
type Proc struct {
	PID     int
	Cmdline string // arguments joined by spaces
}

func (p Proc) String() string { return strconv.Itoa(p.PID) + ": " + p.Cmdline }

// stat returns the fields of /proc/<pid>/stat after the command name (which
// may contain spaces), so f[0] is field 3 (state); nil if pid is gone.
func stat(pid string) []string {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// StartTime is pid's start time (field 22 of its stat, in clock ticks since
// boot), or "" when there is no such process. With the pid it names one
// process for good: a reused pid has another start time.
func StartTime(pid int) string {
	f := stat(strconv.Itoa(pid))
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// HasEnv reports whether process pid has the environment entry kv
// ("KEY=VALUE"). An exited process (even a zombie) has no environment.
func HasEnv(pid int, kv string) bool {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	return err == nil && bytes.Contains(append([]byte{0}, env...), []byte("\x00"+kv+"\x00"))
}

func pids() []string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// WithEnv lists the processes whose environment has the entry kv.
func WithEnv(kv string) []Proc {
	var out []Proc
	for _, s := range pids() {
		pid, _ := strconv.Atoi(s)
		if !HasEnv(pid, kv) {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + s + "/cmdline")
		out = append(out, Proc{PID: pid, Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))})
	}
	return out
}

// Await waits up to timeout until a process whose environment holds kv
// runs the command line cmdline; it returns whether one did and the
// processes with kv it saw last.
func Await(kv, cmdline string, timeout time.Duration) (bool, []Proc) {
	deadline := time.Now().Add(timeout)
	for {
		ps := WithEnv(kv)
		for _, p := range ps {
			if p.Cmdline == cmdline {
				return true, ps
			}
		}
		if time.Now().After(deadline) {
			return false, ps
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// GroupAlive reports whether a process of group pgid has not exited
// (zombies, which nobody may reap, do not count).
func GroupAlive(pgid int) bool {
	g := strconv.Itoa(pgid)
	for _, s := range pids() {
		if f := stat(s); len(f) > 2 && f[2] == g && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// KillGroup SIGKILLs process group pgid and, since a signal is delivered
// asynchronously, waits (up to wait) until none of its processes runs, so
// that what the caller records next is already true. It reports whether the
// group existed.
func KillGroup(pgid int, wait time.Duration) bool {
	if pgid <= 1 || syscall.Kill(-pgid, syscall.SIGKILL) != nil {
		return false
	}
	deadline := time.Now().Add(wait)
	for GroupAlive(pgid) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// KillWithEnv SIGKILLs every process whose environment has the entry kv
// and waits (up to wait) until they are gone. It returns how many it killed.
func KillWithEnv(kv string, wait time.Duration) int {
	n := 0
	for _, p := range WithEnv(kv) {
		if p.PID > 1 && p.PID != os.Getpid() && syscall.Kill(p.PID, syscall.SIGKILL) == nil {
			n++
		}
	}
	deadline := time.Now().Add(wait)
	for n > 0 && len(WithEnv(kv)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return n
}
