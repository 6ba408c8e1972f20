package loader

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"

	"github.com/plugd/plugd/sdk"
)

// TrialResult is what `plugd check -json` prints on its last stdout line.
type TrialResult struct {
	OK      bool   `json:"ok"`
	Reason  string `json:"reason,omitempty"`
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	API     bool   `json:"api,omitempty"`
	SLP     bool   `json:"slp,omitempty"`
}

// Trial runs `Exe check -json path` and returns its verdict. A crash or
// timeout of the child is reported as a failed verdict, not an error.
func (l *Loader) Trial(ctx context.Context, path string) TrialResult {
	ctx, cancel := context.WithTimeout(ctx, l.CheckTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, l.Exe, "check", "-json", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return TrialResult{Reason: fmt.Sprintf("trial load did not finish within %s (does its init block?)", l.CheckTimeout)}
	}
	var res TrialResult
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &res); jerr != nil {
		reason := "trial load crashed"
		if err != nil {
			reason += ": " + err.Error()
		}
		if tail := firstLines(errb.String(), 6); tail != "" {
			reason += ": " + tail
		}
		return TrialResult{Reason: reason}
	}
	return res
}

func (l *Loader) trial(ctx context.Context, path, name string) error {
	res := l.Trial(ctx, path)
	if !res.OK {
		return sdk.Errorf(http.StatusUnprocessableEntity, "file %q failed its trial load: %s", name, res.Reason)
	}
	return nil
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n] // a Go crash puts the reason first
	}
	return strings.Join(lines, " | ")
}
