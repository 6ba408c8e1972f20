package driver

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// noCores turns core dumps off for pid (RLIMIT_CORE 0): a crash-looping
// instance must not fill the disk with cores.
func noCores(pid int) {
	lim := syscall.Rlimit{Cur: 0, Max: 0}
	_, _, _ = syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), uintptr(syscall.RLIMIT_CORE), uintptr(unsafe.Pointer(&lim)), 0, 0, 0)
}

// startTicks reads the start time of pid (clock ticks since boot, field 22
// of /proc/<pid>/stat) and whether it is a zombie. Together with the pid it
// identifies a process across pid reuse.
func startTicks(pid int) (ticks uint64, zombie bool, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false, err
	}
	// comm (field 2) may contain spaces and parens: parse after the last ')'
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false, fmt.Errorf("short /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state); field 22 is f[19]
	t, err := strconv.ParseUint(f[19], 10, 64)
	return t, f[0] == "Z" || f[0] == "X", err
}

// rssBytes is the resident set size of pid.
func rssBytes(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// rssByGroup sums the resident memory of every process by process group.
func rssByGroup() map[int]int64 {
	out := map[int]int64{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil {
			out[g] += rssBytes(pid)
		}
	}
	return out
}

// exitText describes a wait status.
func exitText(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exited with status %d", ws.ExitStatus())
	case ws.Signaled():
		return fmt.Sprintf("killed by signal %v", ws.Signal())
	}
	return fmt.Sprintf("ended (wait status %#x)", uint32(ws))
}

// probeExit checks whether the process (pid, ticks) is still running. For
// our own children it reaps them. ok is true while the process runs.
func probeExit(pid int, ticks uint64) (running bool, why string) {
	var ws syscall.WaitStatus
	wpid, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	switch {
	case err == nil && wpid == pid:
		return false, exitText(ws)
	case err == nil && wpid == 0:
		return true, ""
	}
	// not our child (adopted after a host restart): look at /proc
	t, zombie, err := startTicks(pid)
	if err != nil || t != ticks {
		return false, "exited (status unknown: not a child of this host process)"
	}
	if zombie {
		return false, "exited (zombie, not a child of this host process)"
	}
	return true, ""
}

// sameProcess reports whether pid is still the process started at ticks.
func sameProcess(pid int, ticks uint64) bool {
	if pid <= 0 {
		return false
	}
	t, zombie, err := startTicks(pid)
	return err == nil && !zombie && t == ticks
}
