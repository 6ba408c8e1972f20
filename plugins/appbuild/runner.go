package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plugd/plugd/plugins/appbuild/apkchannel"
	"github.com/plugd/plugd/plugins/appbuild/internal/procs"
	"github.com/plugd/plugd/sdk"
)

const reasonStopped = "interrupted: the plugin instance was stopped (swap or shutdown) before the build finished"

// runningBuild is a build this instance runs.
type runningBuild struct {
	id     string
	work   string // the build's work dir
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	reason string // why it was stopped, if it was
	// detached is set when a newer instance adopted the build during a
	// swap: the runner then no longer uses the store and leaves its
	// outcome in a file for the adopter.
	detached bool
	finished bool
}

func (rb *runningBuild) stop(reason string) {
	rb.mu.Lock()
	if rb.reason == "" {
		rb.reason = reason
	}
	rb.mu.Unlock()
	rb.cancel()
}

func (rb *runningBuild) stopReason() string {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.reason
}

func (rb *runningBuild) isDetached() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.detached
}

// pollCancel turns a cancel file left by an adopting instance into a stop.
func (rb *runningBuild) pollCancel() {
	if b, err := os.ReadFile(filepath.Join(rb.work, cancelFile)); err == nil {
		rb.stop(string(b))
	}
}

// Files in a build's work dir that instances use to hand a running build
// over during a swap.
const (
	cancelFile  = "cancel"       // reason; written by the adopter to cancel
	pgidFile    = "pgid"         // process group of the recipe run in progress
	outcomeFile = "outcome.json" // written by a detached runner when done
)

func (p *plugin) launch(b *Build) {
	// Not derived from the instance's context: a build handed over to a
	// newer instance must survive this instance's stop.
	rctx, cancel := context.WithCancel(context.Background())
	rb := &runningBuild{id: b.ID, work: filepath.Join(p.workDir, b.ID), ctx: rctx, cancel: cancel}
	p.mu.Lock()
	p.running[b.ID] = rb
	p.mu.Unlock()
	p.wg.Add(1)
	p.h.Go("appbuild-build-"+b.ID, func(context.Context) {
		defer p.wg.Done()
		defer cancel()
		defer func() {
			p.mu.Lock()
			delete(p.running, b.ID)
			p.mu.Unlock()
		}()
		// Settle the build even if the runner panics (h.Go recovers it).
		settled := false
		defer func() {
			if !settled {
				reason := "internal error in the build runner"
				if r := rb.stopReason(); r != "" {
					reason = r
				}
				p.settle(rb, outcome{Status: StatusFailed, Reason: reason, Results: b.Results})
			}
		}()
		leaseDone := make(chan struct{})
		go p.keepLease(rb, leaseDone)
		defer close(leaseDone)
		p.run(rb, b)
		settled = true
	})
}

// keepLease renews the build's lease and watches for a cancel request made
// through another instance.
func (p *plugin) keepLease(rb *runningBuild, done <-chan struct{}) {
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if rb.isDetached() {
			return // the adopter keeps the lease now
		}
		ctx, cancel := context.WithTimeout(context.Background(), leaseRenew)
		_ = p.store.Update(ctx, func(tx sdk.Tx) error {
			var b Build
			if err := getJSON(tx, kBuild+rb.id, &b); err != nil {
				return err
			}
			if b.done() {
				return nil
			}
			if b.Cancel {
				rb.stop("canceled on request")
			}
			return putJSON(tx, kLease+rb.id, leaseEntry{Proc: p.procID}, sdk.WithTTL(leaseTTL))
		})
		cancel()
	}
}

// buildLog is a build's log file: the runner's notes and the recipe's
// output, capped at max bytes.
type buildLog struct {
	mu      sync.Mutex
	f       *os.File
	n, max  int64
	clipped bool
}

func openLog(path string, max int64) (*buildLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	st, _ := f.Stat()
	return &buildLog{f: f, n: st.Size(), max: max}, nil
}

func (l *buildLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= l.max {
		if !l.clipped {
			l.clipped = true
			l.f.WriteString("\n[appbuild] log limit reached: further output dropped\n")
		}
		return len(b), nil
	}
	w := b
	if int64(len(w)) > l.max-l.n {
		w = w[:l.max-l.n]
	}
	n, err := l.f.Write(w)
	l.n += int64(n)
	if err != nil {
		return n, err
	}
	return len(b), nil
}

func (l *buildLog) notef(format string, args ...any) {
	fmt.Fprintf(l, "[appbuild %s] %s\n", time.Now().UTC().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func appendLog(path, s string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	f.WriteString(s)
	f.Close()
}

func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, st.Size()-off)
	n2, _ := f.ReadAt(b, off)
	return strings.ToValidUTF8(string(b[:n2]), "?")
}

func (p *plugin) cleanWork(id string) { os.RemoveAll(filepath.Join(p.workDir, id)) }

// outcome is what run decided.
type outcome struct {
	Status  string          `json:"status"`
	Reason  string          `json:"reason,omitempty"`
	Exit    *int            `json:"exit_code,omitempty"`
	Method  string          `json:"method,omitempty"`
	Results []ChannelResult `json:"results"`
}

func (o *outcome) apply(b *Build, logPath string) {
	b.Status, b.Reason, b.ExitCode, b.Method, b.Results = o.Status, o.Reason, o.Exit, o.Method, o.Results
	if o.Status == StatusFailed {
		b.LogTail = logTail(logPath, 2048)
	}
}

func (p *plugin) run(rb *runningBuild, b *Build) {
	logPath := filepath.Join(p.logsDir, b.ID+".log")
	lg, err := openLog(logPath, p.cfg.MaxLogBytes)
	o := outcome{Results: make([]ChannelResult, len(b.Results))}
	for i := range o.Results {
		o.Results[i] = ChannelResult{Channel: b.Results[i].Channel, Status: StatusPending, Artifacts: []Artifact{}}
	}
	if err == nil {
		defer lg.f.Close()
		lg.notef("build %s: app %s version %s (code %s, name %s) platform %s channels %s",
			b.ID, b.AppID, b.VersionID, b.VersionCode, b.VersionName, b.Platform, strings.Join(b.Channels, ","))
		err = p.build(rb, b, lg, &o)
	}
	rb.pollCancel()
	switch {
	case err == nil:
		o.Status = StatusSucceeded
	case rb.stopReason() != "":
		o.Status, o.Reason = StatusFailed, rb.stopReason()
		if strings.HasPrefix(o.Reason, "canceled") {
			o.Status = StatusCanceled
		}
	default:
		o.Status, o.Reason = StatusFailed, err.Error()
	}
	for i := range o.Results {
		if o.Results[i].Status == StatusPending {
			o.Results[i].Status = StatusSkipped
			if o.Status == StatusCanceled {
				o.Results[i].Status = StatusCanceled
			}
		}
	}
	if lg != nil {
		msg := "build " + b.ID + " " + o.Status
		if o.Reason != "" {
			msg += ": " + o.Reason
		}
		lg.notef("%s", msg)
	}
	p.settle(rb, o)
}

// settle records the outcome: in the store, or, when the build was handed
// over to a newer instance, in a file the adopter applies.
func (p *plugin) settle(rb *runningBuild, o outcome) {
	rb.mu.Lock()
	rb.finished = true
	detached := rb.detached
	rb.mu.Unlock()
	if detached {
		b, err := json.Marshal(o)
		if err == nil {
			tmp := filepath.Join(rb.work, outcomeFile+".tmp")
			if err = os.WriteFile(tmp, b, 0o644); err == nil {
				err = os.Rename(tmp, filepath.Join(rb.work, outcomeFile))
			}
		}
		if err != nil {
			// The adopter's lease lapses and the build is failed as orphaned.
			appendLog(filepath.Join(p.logsDir, rb.id+".log"), "[appbuild] cannot hand the result over: "+err.Error()+"\n")
		}
		return
	}
	p.cleanWork(rb.id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logPath := filepath.Join(p.logsDir, rb.id+".log")
	err := p.finish(ctx, rb.id, func(nb *Build) { o.apply(nb, logPath) })
	if err != nil {
		p.h.Logger().WithError(err).WithField("build", rb.id).Error("recording build result")
	}
}

// build does the work; it fills o and returns an error for a failure that
// is not already recorded in o.
func (p *plugin) build(rb *runningBuild, b *Build, lg *buildLog, o *outcome) error {
	recipe, ok := p.cfg.Recipes[b.Platform]
	if !ok {
		return fmt.Errorf("no build recipe is configured for platform %s", b.Platform)
	}
	work := filepath.Join(p.workDir, b.ID)
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	artDir := filepath.Join(p.artifactsDir, b.ID)
	if err := os.MkdirAll(artDir, 0o755); err != nil {
		return err
	}
	mode := recipe.ChannelMode
	if mode == ModeStamp || mode == ModeStampOrPerChannel {
		out := filepath.Join(work, "out")
		if err := p.runRecipe(rb, b, recipe, "", out, lg, o); err != nil {
			return err
		}
		err := p.stampAll(rb, b, out, artDir, lg, o)
		if err == nil || mode == ModeStamp || rb.ctx.Err() != nil {
			return err
		}
		lg.notef("cannot stamp channels (%v): falling back to one recipe run per channel", err)
		for i := range o.Results {
			o.Results[i] = ChannelResult{Channel: o.Results[i].Channel, Status: StatusPending, Artifacts: []Artifact{}}
		}
	}
	o.Method = ModePerChannel
	for i, ch := range b.Channels {
		out := filepath.Join(work, "out-"+ch)
		if err := p.runRecipe(rb, b, recipe, ch, out, lg, o); err != nil {
			o.Results[i].Status, o.Results[i].Error = StatusFailed, err.Error()
			return err
		}
		arts, err := p.collect(b, out, artDir, ch)
		if err != nil {
			o.Results[i].Status, o.Results[i].Error = StatusFailed, err.Error()
			return fmt.Errorf("channel %s: %w", ch, err)
		}
		o.Results[i].Status, o.Results[i].Artifacts = StatusSucceeded, arts
		lg.notef("channel %s: %d file(s)", ch, len(arts))
	}
	return nil
}

// stampAll makes each channel's package from the one signed APK in out.
func (p *plugin) stampAll(rb *runningBuild, b *Build, out, artDir string, lg *buildLog, o *outcome) error {
	apks, err := filepath.Glob(filepath.Join(out, "*.apk"))
	if err != nil {
		return err
	}
	if len(apks) != 1 {
		return fmt.Errorf("channel stamping needs exactly one .apk in the output dir, the recipe left %d", len(apks))
	}
	st, err := apkchannel.NewStamper(apks[0])
	if err != nil {
		if errors.Is(err, apkchannel.ErrNoSigningBlock) {
			return fmt.Errorf("%s has no APK Signing Block: sign it with APK Signature Scheme v2 or later (apksigner), or set channel_mode: stamp_or_per_channel to build each channel separately", filepath.Base(apks[0]))
		}
		return err
	}
	defer st.Close()
	o.Method = ModeStamp
	stem := strings.TrimSuffix(filepath.Base(apks[0]), ".apk")
	for i, ch := range b.Channels {
		rb.pollCancel()
		if rb.ctx.Err() != nil {
			return fmt.Errorf("stopped: %s", rb.stopReason())
		}
		name := stem + "-" + ch + ".apk"
		t0 := time.Now()
		res, err := st.Write(filepath.Join(artDir, name), ch, nil)
		if err != nil {
			o.Results[i].Status, o.Results[i].Error = StatusFailed, err.Error()
			return fmt.Errorf("channel %s: %w", ch, err)
		}
		o.Results[i].Status = StatusSucceeded
		o.Results[i].Artifacts = []Artifact{{File: name, Size: res.Size, SHA256: res.SHA256, URL: p.urlPrefix + "/download/" + b.ID + "/" + name}}
		lg.notef("channel %s: stamped %s (%d bytes) in %s", ch, name, res.Size, time.Since(t0).Round(time.Microsecond))
	}
	return nil
}

// collect moves the files a per-channel run left in out into the artifact
// dir as <stem>-<channel><ext>.
func (p *plugin) collect(b *Build, out, artDir, ch string) ([]Artifact, error) {
	ents, err := os.ReadDir(out)
	if err != nil {
		return nil, err
	}
	var arts []Artifact
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		ext := filepath.Ext(e.Name())
		name := strings.TrimSuffix(e.Name(), ext) + "-" + ch + ext
		dst := filepath.Join(artDir, name)
		if err := moveFile(filepath.Join(out, e.Name()), dst); err != nil {
			return nil, err
		}
		size, sum, err := hashFile(dst)
		if err != nil {
			return nil, err
		}
		arts = append(arts, Artifact{File: name, Size: size, SHA256: sum, URL: p.urlPrefix + "/download/" + b.ID + "/" + name})
	}
	if len(arts) == 0 {
		return nil, errors.New("the recipe left no file in APPBUILD_OUTPUT_DIR")
	}
	sort.Slice(arts, func(i, j int) bool { return arts[i].File < arts[j].File })
	return arts, nil
}

func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// runRecipe runs the recipe once in its own process group, so a cancel or
// timeout ends every process it started.
func (p *plugin) runRecipe(rb *runningBuild, b *Build, r Recipe, channel, out string, lg *buildLog, o *outcome) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	timeout := p.cfg.Timeout
	if r.Timeout > 0 {
		timeout = r.Timeout
	}
	ctx, cancel := context.WithTimeout(rb.ctx, timeout)
	defer cancel()
	dir := r.Dir
	if dir == "" {
		dir = filepath.Join(p.workDir, b.ID, "src")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, r.Command[0], r.Command[1:]...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), r.Env...),
		"APPBUILD_BUILD_ID="+b.ID,
		"APPBUILD_APP_ID="+b.AppID,
		"APPBUILD_VERSION_ID="+b.VersionID,
		"APPBUILD_VERSION_CODE="+b.VersionCode,
		"APPBUILD_VERSION_NAME="+b.VersionName,
		"APPBUILD_GIT_TAG="+b.GitTag,
		"APPBUILD_GIT_INDEX="+b.GitIndex,
		"APPBUILD_PLATFORM="+b.Platform,
		"APPBUILD_CHANNEL="+channel,
		"APPBUILD_CHANNELS="+strings.Join(b.Channels, ","),
		"APPBUILD_OUTPUT_DIR="+out,
	)
	cmd.Stdout, cmd.Stderr = lg, lg
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// SIGTERM to the whole group; WaitDelay escalates to SIGKILL.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 5 * time.Second
	what := "recipe"
	if channel != "" {
		what = "recipe for channel " + channel
	}
	lg.notef("running %s: %s (dir %s, timeout %s)", what, strings.Join(r.Command, " "), dir, timeout)
	t0 := time.Now()
	rb.pollCancel()
	if rb.ctx.Err() != nil {
		return fmt.Errorf("%s not started: %s", what, rb.stopReason())
	}
	err := cmd.Start()
	if err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	pgid := filepath.Join(rb.work, pgidFile)
	os.WriteFile(pgid, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	err = cmd.Wait()
	os.Remove(pgid)
	// Whatever the outcome, nothing the recipe started may outlive it.
	procs.KillGroup(cmd.Process.Pid, 5*time.Second)
	rb.pollCancel()
	if err == nil {
		lg.notef("%s succeeded in %s", what, time.Since(t0).Round(time.Millisecond))
		return nil
	}
	if rb.ctx.Err() != nil {
		return fmt.Errorf("%s stopped: %s", what, rb.stopReason())
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%s timed out after %s", what, timeout)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		o.Exit = &code
		lg.notef("%s failed: %v", what, err)
		return fmt.Errorf("%s failed: %v", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
