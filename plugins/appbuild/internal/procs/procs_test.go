package procs

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"
)

func TestFindAndKill(t *testing.T) {
	kv := "PROCS_TEST_ID=" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// A group leader with a child: sh and its sleep share the environment.
	cmd := exec.Command("sh", "-c", "sleep 61.5 & wait")
	cmd.Env = append(os.Environ(), kv)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done }()

	if StartTime(cmd.Process.Pid) == "" {
		t.Fatal("no start time for a live process")
	}
	// Until the child has exec'd, /proc/<pid>/environ is still the parent's.
	for i := 0; !HasEnv(cmd.Process.Pid, kv); i++ {
		if i == 200 {
			t.Fatal("HasEnv false for the child's environment")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if HasEnv(os.Getpid(), kv) {
		t.Fatal("HasEnv true for a process without the variable")
	}
	if ok, ps := Await(kv, "sleep 61.5", 10*time.Second); !ok {
		t.Fatalf("Await did not see the sleep: %v", ps)
	}
	if ok, _ := Await(kv, "sleep 99", 100*time.Millisecond); ok {
		t.Fatal("Await saw a command nobody runs")
	}
	for i := 0; len(WithEnv(kv)) < 2; i++ {
		if i == 200 {
			t.Fatalf("want sh and sleep, found %v", WithEnv(kv))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !GroupAlive(cmd.Process.Pid) {
		t.Fatal("GroupAlive false for a running group")
	}
	if !KillGroup(cmd.Process.Pid, 5*time.Second) {
		t.Fatal("KillGroup: no group")
	}
	if GroupAlive(cmd.Process.Pid) || len(WithEnv(kv)) != 0 {
		t.Fatalf("group alive after KillGroup returned: %v", WithEnv(kv))
	}
	<-done
	if StartTime(cmd.Process.Pid) != "" {
		t.Fatal("start time of a reaped process")
	}
}

func TestKillWithEnv(t *testing.T) {
	kv := "PROCS_TEST_ID=" + strconv.FormatInt(time.Now().UnixNano(), 36)
	// Its own session: not in any group we could kill by pgid.
	cmd := exec.Command("sleep", "61.7")
	cmd.Env = append(os.Environ(), kv)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	defer func() { cmd.Process.Kill(); <-done }()
	if n := KillWithEnv(kv, 5*time.Second); n != 1 {
		t.Fatalf("killed %d, want 1", n)
	}
	if len(WithEnv(kv)) != 0 {
		t.Fatal("still running after KillWithEnv returned")
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("not reaped")
	}
}
