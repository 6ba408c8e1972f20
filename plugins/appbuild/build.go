package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/plugd/plugd/plugins/appbuild/internal/procs"
	"github.com/plugd/plugd/sdk"
)

// Build states.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
	// StatusSkipped is a channel result never attempted (an earlier one failed).
	StatusSkipped = "skipped"
	StatusPending = "pending"
)

// Build is one build of a version for some channels.
type Build struct {
	ID          string   `json:"id"`
	AppID       string   `json:"appid"`
	VersionID   string   `json:"versionid"`
	Platform    string   `json:"platform"`
	VersionCode string   `json:"version_code"`
	VersionName string   `json:"version_name"`
	GitTag      string   `json:"git_tag,omitempty"`
	GitIndex    string   `json:"git_index,omitempty"`
	Channels    []string `json:"channels"`
	Status      string   `json:"status"`
	// Reason says why a build failed or was canceled.
	Reason string `json:"reason,omitempty"`
	// ExitCode is the exit status of the recipe run that failed.
	ExitCode *int `json:"exit_code,omitempty"`
	// Method is how channel packages were made: stamp or per_channel.
	Method   string          `json:"method,omitempty"`
	User     string          `json:"user,omitempty"`
	Created  time.Time       `json:"created"`
	Started  *time.Time      `json:"started,omitempty"`
	Ended    *time.Time      `json:"ended,omitempty"`
	Results  []ChannelResult `json:"results"`
	LogURL   string          `json:"log_url"`
	LogTail  string          `json:"log_tail,omitempty"`
	Cancel   bool            `json:"cancel_requested,omitempty"`
	Removed  bool            `json:"artifacts_removed,omitempty"`
	RunnerID string          `json:"runner,omitempty"`
}

// ChannelResult is the outcome of one channel of a build.
type ChannelResult struct {
	Channel   string     `json:"channel"`
	Status    string     `json:"status"`
	Error     string     `json:"error,omitempty"`
	Artifacts []Artifact `json:"artifacts"`
}

// Artifact is a downloadable file of a build.
type Artifact struct {
	File   string `json:"file"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	URL    string `json:"url"`
}

func (b *Build) done() bool {
	return b.Status == StatusSucceeded || b.Status == StatusFailed || b.Status == StatusCanceled
}

type activeEntry struct {
	App    string `json:"app"`
	Status string `json:"status"`
}

type leaseEntry struct {
	Proc     string `json:"proc"`
	Instance string `json:"instance"`
}

const (
	leaseTTL   = 10 * time.Second
	leaseRenew = 2 * time.Second
)

type buildRequest struct {
	AppID     string   `json:"appid"`
	VersionID string   `json:"versionid"`
	Channels  []string `json:"channels"`
}

func (p *plugin) routeBuild(w http.ResponseWriter, r *http.Request, seg []string) {
	switch {
	case len(seg) == 0:
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		p.startBuild(w, r)
	case len(seg) == 2 && seg[0] == "status":
		if r.Method != http.MethodGet {
			methodNotAllowed(w, "GET")
			return
		}
		p.buildStatus(w, r, seg[1])
	case len(seg) == 1:
		if r.Method != http.MethodGet {
			methodNotAllowed(w, "GET")
			return
		}
		b, err := p.getBuild(r.Context(), seg[0])
		if err != nil {
			p.fail(w, r, err)
			return
		}
		sdk.WriteJSON(w, http.StatusOK, b)
	case len(seg) == 2 && seg[1] == "log":
		if r.Method != http.MethodGet {
			methodNotAllowed(w, "GET")
			return
		}
		p.buildLog(w, r, seg[0])
	case len(seg) == 2 && seg[1] == "cancel":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, "POST")
			return
		}
		p.cancelBuild(w, r, seg[0])
	case len(seg) == 2 && seg[1] == "download":
		if r.Method != http.MethodGet {
			methodNotAllowed(w, "GET")
			return
		}
		p.downloadURLs(w, r, seg[0])
	default:
		writeErr(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}
}

func (p *plugin) getBuild(ctx context.Context, id string) (*Build, error) {
	if !validID(id) {
		return nil, notFound("build %q not found", id)
	}
	b, err := p.store.Get(ctx, kBuild+id)
	if errors.Is(err, sdk.ErrNotFound) {
		return nil, notFound("build %s not found", id)
	}
	if err != nil {
		return nil, err
	}
	var out Build
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode build %s: %w", id, err)
	}
	return &out, nil
}

func (p *plugin) startBuild(w http.ResponseWriter, r *http.Request) {
	var in buildRequest
	if err := p.decode(r, &in); err != nil {
		p.fail(w, r, err)
		return
	}
	user, _, _ := r.BasicAuth()
	var b *Build
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error {
		app, err := liveApp(tx, in.AppID)
		if err != nil {
			return badRequest("appid: %v", err)
		}
		if app.Forbidden {
			return badRequest("app %s is forbidden: builds are disabled for it", app.ID)
		}
		if !validID(in.VersionID) {
			return badRequest("versionid %q is not a version id", in.VersionID)
		}
		var v Version
		if err := getJSON(tx, kVersion+app.ID+"/"+in.VersionID, &v); err != nil {
			if errors.Is(err, sdk.ErrNotFound) {
				return badRequest("versionid: version %s not found in app %s", in.VersionID, app.ID)
			}
			return err
		}
		if _, ok := p.cfg.Recipes[v.Platform]; !ok {
			return badRequest("no build recipe is configured for platform %s (plugins.appbuild.recipes.%s)", v.Platform, v.Platform)
		}
		if len(in.Channels) == 0 {
			return badRequest("channels must list at least one channel code")
		}
		chans, err := listJSON[Channel](tx, kChannel+app.ID+"/")
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, c := range in.Channels {
			if seen[c] {
				return badRequest("channel %q listed twice", c)
			}
			seen[c] = true
			i := slices.IndexFunc(chans, func(ch Channel) bool { return ch.Code == c })
			if i < 0 {
				return badRequest("channel %q is not a channel of app %s", c, app.ID)
			}
			if chans[i].Platform != v.Platform {
				return badRequest("channel %q is for %s, the version is for %s", c, chans[i].Platform, v.Platform)
			}
		}
		id := newID()
		b = &Build{
			ID: id, AppID: app.ID, VersionID: v.ID, Platform: v.Platform,
			VersionCode: v.Code, VersionName: v.Name, GitTag: v.GitTag, GitIndex: v.GitIndex,
			Channels: in.Channels, Status: StatusQueued, User: user, Created: time.Now().UTC(),
			LogURL: p.urlPrefix + "/api/build/" + id + "/log",
		}
		for _, c := range in.Channels {
			b.Results = append(b.Results, ChannelResult{Channel: c, Status: StatusPending, Artifacts: []Artifact{}})
		}
		if err := putJSON(tx, kBuild+id, b); err != nil {
			return err
		}
		if err := tx.Put(kAppBuild+app.ID+"/"+id, []byte{}); err != nil {
			return err
		}
		return putJSON(tx, kActive+id, activeEntry{App: app.ID, Status: StatusQueued})
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	p.poke()
	// The seed answers 200 here (not 201); the body is the build record.
	sdk.WriteJSON(w, http.StatusOK, b)
}

// buildStatus answers the seed's {"running": bool}: true while a build of
// the app is queued or running.
func (p *plugin) buildStatus(w http.ResponseWriter, r *http.Request, appID string) {
	running := false
	err := p.view(r.Context(), func(tx sdk.Tx) error {
		if _, err := liveApp(tx, appID); err != nil {
			return err
		}
		act, err := tx.List(kActive)
		if err != nil {
			return err
		}
		for _, kv := range act {
			var e activeEntry
			if json.Unmarshal(kv.Value, &e) == nil && e.App == appID {
				running = true
			}
		}
		return nil
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, map[string]bool{"running": running})
}

func (p *plugin) buildHistory(w http.ResponseWriter, r *http.Request, appID string) {
	var out []Build
	err := p.view(r.Context(), func(tx sdk.Tx) error {
		if _, err := liveApp(tx, appID); err != nil {
			return err
		}
		idx, err := tx.List(kAppBuild + appID + "/")
		if err != nil {
			return err
		}
		out = make([]Build, 0, len(idx))
		for i := len(idx) - 1; i >= 0; i-- { // newest first
			var b Build
			if err := getJSON(tx, kBuild+strings.TrimPrefix(idx[i].Key, kAppBuild+appID+"/"), &b); err != nil {
				return err
			}
			out = append(out, b)
		}
		return nil
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, out)
}

func (p *plugin) cancelBuild(w http.ResponseWriter, r *http.Request, id string) {
	if !validID(id) {
		p.fail(w, r, notFound("build %q not found", id))
		return
	}
	user, _, _ := r.BasicAuth()
	var out Build
	err := p.store.Update(r.Context(), func(tx sdk.Tx) error {
		if err := getJSON(tx, kBuild+id, &out); err != nil {
			if errors.Is(err, sdk.ErrNotFound) {
				return notFound("build %s not found", id)
			}
			return err
		}
		switch out.Status {
		case StatusQueued:
			now := time.Now().UTC()
			out.Status, out.Ended, out.Reason = StatusCanceled, &now, "canceled by "+user+" while queued"
			for i := range out.Results {
				out.Results[i].Status = StatusCanceled
			}
			if err := tx.Delete(kActive + id); err != nil {
				return err
			}
		case StatusRunning:
			out.Cancel = true
		default:
			return sdk.Errorf(http.StatusConflict, "build %s already %s", id, out.Status)
		}
		return putJSON(tx, kBuild+id, out)
	})
	if err != nil {
		p.fail(w, r, err)
		return
	}
	if out.Status == StatusRunning {
		p.mu.Lock()
		rb := p.running[id]
		p.mu.Unlock()
		if rb != nil {
			rb.stop("canceled by " + user)
		}
		// Otherwise another instance runs it and sees the flag within a
		// lease period.
	}
	p.poke()
	status := http.StatusOK // settled
	if !out.done() {
		status = http.StatusAccepted // the runner stops it shortly
	}
	sdk.WriteJSON(w, status, out)
}

// ---- dispatching

func (p *plugin) dispatch(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastReap := time.Now()
	// A handover offer wakes us at once where the store can watch.
	if ch, err := p.store.Watch(ctx, kHandover); err == nil {
		p.h.Go("appbuild-handover-watch", func(context.Context) {
			for range ch {
				p.poke()
			}
		})
	}
	for {
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		if !stopping {
			for {
				b, err := p.claim(ctx)
				if err != nil {
					if ctx.Err() == nil {
						p.h.Logger().WithError(err).Error("claiming a queued build")
					}
					break
				}
				if b == nil {
					break
				}
				p.launch(b)
			}
			if err := p.announce(ctx); err != nil && ctx.Err() == nil {
				p.h.Logger().WithError(err).Error("renewing the instance record")
			}
			if err := p.adoptAndWatch(ctx); err != nil && ctx.Err() == nil {
				p.h.Logger().WithError(err).Error("watching handed-over builds")
			}
			if time.Since(lastReap) >= leaseRenew {
				if err := p.reapOrphans(ctx); err != nil && ctx.Err() == nil {
					p.h.Logger().WithError(err).Error("checking for orphaned builds")
				}
				lastReap = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-tick.C:
		}
	}
}

// claim moves the oldest queued build whose app has nothing running to
// running, within the global limit, atomically in the store (so two
// instances overlapping during a swap never take the same build or exceed
// the limits).
func (p *plugin) claim(ctx context.Context) (*Build, error) {
	var claimed *Build
	err := p.store.Update(ctx, func(tx sdk.Tx) error {
		act, err := tx.List(kActive)
		if err != nil {
			return err
		}
		busy := map[string]bool{}
		running := 0
		for _, kv := range act {
			var e activeEntry
			if err := json.Unmarshal(kv.Value, &e); err != nil {
				return fmt.Errorf("decode %s: %w", kv.Key, err)
			}
			if e.Status == StatusRunning {
				running++
				busy[e.App] = true
			}
		}
		if running >= p.cfg.MaxConcurrent {
			return nil
		}
		for _, kv := range act {
			var e activeEntry
			json.Unmarshal(kv.Value, &e)
			if e.Status != StatusQueued || busy[e.App] {
				continue
			}
			id := strings.TrimPrefix(kv.Key, kActive)
			var b Build
			if err := getJSON(tx, kBuild+id, &b); err != nil {
				return err
			}
			now := time.Now().UTC()
			b.Status, b.Started, b.RunnerID = StatusRunning, &now, p.procID
			if err := putJSON(tx, kBuild+id, b); err != nil {
				return err
			}
			if err := putJSON(tx, kActive+id, activeEntry{App: e.App, Status: StatusRunning}); err != nil {
				return err
			}
			if err := putJSON(tx, kLease+id, leaseEntry{Proc: p.procID}, sdk.WithTTL(leaseTTL)); err != nil {
				return err
			}
			claimed = &b
			return nil
		}
		return nil
	})
	return claimed, err
}

// reapOrphans fails running builds whose runner is gone: no live lease, or a
// lease left by a host process that no longer exists.
func (p *plugin) reapOrphans(ctx context.Context) error {
	act, err := p.store.List(ctx, kActive)
	if err != nil {
		return err
	}
	for _, kv := range act {
		var e activeEntry
		if json.Unmarshal(kv.Value, &e) != nil || e.Status != StatusRunning {
			continue
		}
		id := strings.TrimPrefix(kv.Key, kActive)
		p.mu.Lock()
		_, mine := p.running[id]
		mine = mine || p.adopted[id]
		p.mu.Unlock()
		if mine {
			continue // alive here, even if a stalled store let its lease lapse
		}
		reason := ""
		lb, err := p.store.Get(ctx, kLease+id)
		switch {
		case errors.Is(err, sdk.ErrNotFound):
			reason = "interrupted: its runner stopped renewing its lease (host restarted or plugin instance stopped while it ran)"
			if b, err := p.getBuild(ctx, id); err == nil && b.RunnerID != p.procID && processGone(b.RunnerID) {
				reason = "interrupted by restart: the host process that ran it is gone"
			}
		case err != nil:
			return err
		default:
			var l leaseEntry
			if json.Unmarshal(lb, &l) == nil && l.Proc != p.procID && processGone(l.Proc) {
				reason = "interrupted by restart: the host process that ran it is gone"
			}
		}
		if reason == "" {
			continue
		}
		p.h.Logger().WithField("build", id).Warn("marking orphaned build failed: " + reason)
		if killLeftovers(filepath.Join(p.workDir, id), id) {
			reason += "; its leftover recipe processes were killed"
		}
		appendLog(filepath.Join(p.logsDir, id+".log"), "[appbuild] "+reason+"\n")
		err = p.finish(ctx, id, func(b *Build) {
			b.Status, b.Reason = StatusFailed, reason
			for i := range b.Results {
				if b.Results[i].Status == StatusPending {
					b.Results[i].Status = StatusFailed
					b.Results[i].Error = reason
				}
			}
		})
		if err != nil {
			return err
		}
		p.cleanWork(id)
	}
	return nil
}

// finish applies fn to a running build and settles it: ended time, off the
// active list, lease dropped. A build already settled is left alone.
//
// Retention is decided in the same transaction, so whoever sees this build
// settled also sees the builds it pushed out marked removed; their files go
// after the commit.
func (p *plugin) finish(ctx context.Context, id string, fn func(b *Build)) error {
	var evicted []string
	err := p.store.Update(ctx, func(tx sdk.Tx) error {
		evicted = nil
		var b Build
		if err := getJSON(tx, kBuild+id, &b); err != nil {
			return err
		}
		if b.done() {
			return nil
		}
		fn(&b)
		now := time.Now().UTC()
		b.Ended = &now
		if b.Status == StatusFailed && b.LogTail == "" {
			b.LogTail = logTail(filepath.Join(p.logsDir, id+".log"), 2048)
		}
		if err := putJSON(tx, kBuild+id, b); err != nil {
			return err
		}
		if err := tx.Delete(kActive + id); err != nil {
			return err
		}
		if err := tx.Delete(kLease + id); err != nil {
			return err
		}
		var err error
		evicted, err = p.retain(tx, b.AppID)
		return err
	})
	if err == nil {
		p.removeArtifacts(evicted)
	}
	p.poke()
	return err
}

// retain marks removed all but the newest cfg.Retention settled builds with
// artifacts of the app, and returns the ids it marked. Records and logs stay.
func (p *plugin) retain(tx sdk.Tx, appID string) ([]string, error) {
	if p.cfg.Retention == 0 || appID == "" {
		return nil, nil
	}
	idx, err := tx.List(kAppBuild + appID + "/")
	if err != nil {
		return nil, err
	}
	var evicted []string
	kept := 0
	for i := len(idx) - 1; i >= 0; i-- {
		id := strings.TrimPrefix(idx[i].Key, kAppBuild+appID+"/")
		var b Build
		if err := getJSON(tx, kBuild+id, &b); err != nil {
			return nil, err
		}
		if !b.done() || b.Removed || !hasArtifacts(&b) {
			continue
		}
		if kept++; kept <= p.cfg.Retention {
			continue
		}
		b.Removed = true
		for i := range b.Results {
			for j := range b.Results[i].Artifacts {
				b.Results[i].Artifacts[j].URL = ""
			}
		}
		if err := putJSON(tx, kBuild+id, b); err != nil {
			return nil, err
		}
		evicted = append(evicted, id)
	}
	return evicted, nil
}

// removeArtifacts deletes the artifact directories of builds already marked
// removed. Downloads answer 410 from the mark, so a failure here costs disk,
// not correctness; it is logged.
func (p *plugin) removeArtifacts(ids []string) {
	for _, id := range ids {
		if err := os.RemoveAll(filepath.Join(p.artifactsDir, id)); err != nil {
			p.h.Logger().WithError(err).WithField("build", id).Error("removing artifacts by retention")
			continue
		}
		p.h.Logger().WithField("build", id).Info("artifacts removed by retention")
	}
}

func hasArtifacts(b *Build) bool {
	for _, r := range b.Results {
		if len(r.Artifacts) > 0 {
			return true
		}
	}
	return false
}

// processID names this host process: hostname, pid and the pid's start
// time, so a reused pid is not mistaken for the same process.
func processID() string {
	host, _ := os.Hostname()
	pid := os.Getpid()
	return host + "/" + strconv.Itoa(pid) + "/" + procs.StartTime(pid)
}

// processGone reports whether the process named by id (from processID) is
// known to have exited. A process on another machine is never "known gone":
// its lease expiry decides.
func processGone(id string) bool {
	parts := strings.Split(id, "/")
	if len(parts) != 3 {
		return false
	}
	if host, _ := os.Hostname(); host != parts[0] {
		return false
	}
	pid, err := strconv.Atoi(parts[1])
	if err != nil {
		return false
	}
	st := procs.StartTime(pid)
	return st == "" || st != parts[2]
}

// killLeftovers kills the recipe processes a dead runner left behind (a
// host killed with SIGKILL leaves its recipe running): the process group
// named in the work dir, if its leader is still that build's recipe, and
// every process whose environment names the build (which also covers a
// recipe started just before the group was written down, or one that left
// its group). The environment check means a reused pid is never hit. It
// reports whether anything was killed.
func killLeftovers(work, id string) bool {
	env := "APPBUILD_BUILD_ID=" + id
	killed := false
	if b, err := os.ReadFile(filepath.Join(work, pgidFile)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && procs.HasEnv(pid, env) {
			killed = procs.KillGroup(pid, 5*time.Second)
		}
	}
	return procs.KillWithEnv(env, 5*time.Second) > 0 || killed
}
