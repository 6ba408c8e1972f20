package driver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// LocalConfig configures the embedded driver.
type LocalConfig struct {
	Store    sdk.Store
	Services sdk.ServiceRegistry
	Logger   logrus.FieldLogger
	// Go runs a supervised goroutine (sdk.Host.Go).
	Go func(name string, fn func(ctx context.Context))
	// DataDir holds the instance logs (DataDir/logs/<app>/<id>.log).
	DataDir string
	// Limits is "auto", "cgroup" or "rlimit".
	Limits string
	// Tick is the supervision period (default 250ms).
	Tick time.Duration
	// StopGrace is how long an instance gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// MaxBackoff caps the delay between restarts of a crashing instance.
	MaxBackoff time.Duration
	// LogMaxSize is the size at which an instance's log is rotated
	// (default 10 MiB); LogKeep how many rotated files are kept
	// (<log>.1 … <log>.N, default 3).
	LogMaxSize int64
	LogKeep    int
	// Shell runs the commands (default /bin/sh).
	Shell string
	// BaseEnv is the environment every instance starts from (default
	// PATH, HOME, LANG, TZ of the host).
	BaseEnv []string
}

// Store keys of the local driver. The store is how a new plugin instance
// (after a swap) or a new host (after a restart) learns what runs: the
// owner key says which plugin instance supervises, proc records hold the
// desired spec, instance records the pid, its start time, port and log.
const (
	keyOwner = "drv/local/owner"
	pfxProc  = "drv/local/proc/"
	pfxInst  = "drv/local/inst/"
)

// errNotOwner means another plugin instance has taken over supervision.
var errNotOwner = errors.New("driver: supervision was taken over by a newer plugin instance")

type procRecord struct {
	Spec Spec `json:"spec"`
	// Prev is the spec before the running rollout; Rolling is true while
	// one runs. A rollout found Rolling at Start was interrupted and is
	// rolled back to Prev.
	Prev    *Spec `json:"prev,omitempty"`
	Rolling bool  `json:"rolling,omitempty"`
	NextID  int   `json:"next_id"`
}

type instRecord struct {
	ID          string    `json:"id"`
	App         string    `json:"app"`
	Proc        string    `json:"proc"`
	PID         int       `json:"pid"`
	StartTicks  uint64    `json:"start_ticks"`
	Port        int       `json:"port"`
	Log         string    `json:"log"`
	Spec        Spec      `json:"spec"` // what this instance runs
	Hash        string    `json:"hash"`
	Started     time.Time `json:"started"`
	Restarts    int       `json:"restarts"`
	LastExit    string    `json:"last_exit,omitempty"`
	State       string    `json:"state"` // running, backoff
	NextRestart time.Time `json:"next_restart,omitempty"`
	// Cgroups are the instance's cgroup directories (none in rlimit mode).
	Cgroups []string `json:"cgroups,omitempty"`
}

type inst struct {
	rec      instRecord
	healthy  bool
	fails    int
	probing  bool
	lastProb time.Time
	adopted  bool
	stopping bool
	// lastHealthErr is the latest failed probe, for error messages.
	lastHealthErr string
}

type proc struct {
	op    sync.Mutex // held by Apply and Remove; the supervisor TryLocks it
	rec   procRecord
	gone  bool
	insts map[string]*inst
}

// Local runs instances as processes of this machine. Instances are started
// in their own process group with stdout and stderr appended to a file, so
// they do not depend on the plugin instance that started them: a newer
// plugin instance adopts them by pid (checked against the start time in
// /proc to rule out pid reuse).
type Local struct {
	cfg    LocalConfig
	id     string
	lim    limiter
	mu     sync.Mutex // guards procs, ports and all inst/proc fields
	procs  map[string]*proc
	ports  map[int]bool
	rss    map[int]int64 // pgid → resident bytes, this tick
	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}
}

// NewLocal builds the embedded driver.
func NewLocal(cfg LocalConfig) *Local {
	if cfg.Tick <= 0 {
		cfg.Tick = 250 * time.Millisecond
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Shell == "" {
		cfg.Shell = "/bin/sh"
	}
	if cfg.LogMaxSize <= 0 {
		cfg.LogMaxSize = 10 << 20
	}
	if cfg.LogKeep <= 0 {
		cfg.LogKeep = 3
	}
	if cfg.BaseEnv == nil {
		for _, k := range []string{"PATH", "HOME", "LANG", "TZ", "TMPDIR"} {
			if v, ok := os.LookupEnv(k); ok {
				cfg.BaseEnv = append(cfg.BaseEnv, k+"="+v)
			}
		}
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &Local{cfg: cfg, id: hex.EncodeToString(b), procs: map[string]*proc{}, ports: map[int]bool{}, done: make(chan struct{})}
}

func (d *Local) Name() string { return "local" }

// LimitsMode is "cgroup-v2", "cgroup-v1" or "rlimit" once started.
func (d *Local) LimitsMode() string {
	if d.lim == nil {
		return ""
	}
	return d.lim.mode()
}

func pkey(app, name string) string { return app + "/" + name }

func (d *Local) log() logrus.FieldLogger { return d.cfg.Logger }

// txn runs fn in a store transaction that first checks that this driver
// still owns supervision.
func (d *Local) txn(ctx context.Context, fn func(tx sdk.Tx) error) error {
	return d.cfg.Store.Update(ctx, func(tx sdk.Tx) error {
		v, err := tx.Get(keyOwner)
		if err != nil || string(v) != d.id {
			return errNotOwner
		}
		return fn(tx)
	})
}

func putJSON(tx sdk.Tx, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(key, b)
}

func instKey(r *instRecord) string { return pfxInst + r.App + "/" + r.Proc + "/" + r.ID }

// Start claims supervision and adopts what the store says runs.
func (d *Local) Start(ctx context.Context) error {
	var why string
	d.lim, why = newLimiter(d.cfg.Limits)
	d.log().Info(why)
	if err := os.MkdirAll(filepath.Join(d.cfg.DataDir, "logs"), 0o755); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	var procs, insts []sdk.KV
	err := d.cfg.Store.Update(ctx, func(tx sdk.Tx) error {
		if err := tx.Put(keyOwner, []byte(d.id)); err != nil {
			return err
		}
		var err error
		if procs, err = tx.List(pfxProc); err != nil {
			return err
		}
		insts, err = tx.List(pfxInst)
		return err
	})
	if err != nil {
		return fmt.Errorf("driver: claim supervision: %w", err)
	}
	d.mu.Lock()
	for _, kv := range procs {
		var r procRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			d.log().Warnf("driver: skip bad record %s: %v", kv.Key, err)
			continue
		}
		if r.Rolling {
			// the plugin instance running the rollout went away: go back
			if r.Prev != nil {
				d.log().Warnf("driver: rollout of %s/%s to %s was interrupted; rolling back to %s", r.Spec.App, r.Spec.Proc, r.Spec.MetaVersion, r.Prev.MetaVersion)
				r.Spec = *r.Prev
			} else {
				d.log().Warnf("driver: first deploy of %s/%s was interrupted; stopping it", r.Spec.App, r.Spec.Proc)
				r.Spec.NumInstances = 0
			}
			r.Prev, r.Rolling = nil, false
		}
		d.procs[pkey(r.Spec.App, r.Spec.Proc)] = &proc{rec: r, insts: map[string]*inst{}}
	}
	adopted, lost := 0, 0
	for _, kv := range insts {
		var r instRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			continue
		}
		p := d.procs[pkey(r.App, r.Proc)]
		if p == nil {
			p = &proc{rec: procRecord{Spec: r.Spec}, insts: map[string]*inst{}}
			p.rec.Spec.NumInstances = 0
			d.procs[pkey(r.App, r.Proc)] = p
		}
		in := &inst{rec: r, adopted: true}
		if r.State == "running" {
			if sameProcess(r.PID, r.StartTicks) {
				adopted++
			} else {
				lost++
				in.rec.State = "backoff"
				in.rec.LastExit = "exited while unsupervised"
				in.rec.NextRestart = time.Now()
			}
		}
		p.insts[r.ID] = in
		d.ports[r.Port] = true
	}
	d.mu.Unlock()
	d.log().Infof("driver: supervising %d procs; adopted %d running instances, %d to restart", len(d.procs), adopted, lost)
	// persist the rollbacks decided above
	d.mu.Lock()
	var recs []procRecord
	for _, p := range d.procs {
		recs = append(recs, p.rec)
	}
	d.mu.Unlock()
	if err := d.txn(ctx, func(tx sdk.Tx) error {
		for i := range recs {
			if err := putJSON(tx, pfxProc+pkey(recs[i].Spec.App, recs[i].Spec.Proc), &recs[i]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("driver: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.cfg.Go("deploy-supervisor", func(hctx context.Context) {
		defer close(d.done)
		t := time.NewTicker(d.cfg.Tick)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-hctx.Done():
				return
			case <-t.C:
				if err := d.tick(lctx); errors.Is(err, errNotOwner) {
					d.log().Info("driver: a newer plugin instance supervises now; this one stops supervising")
					return
				}
			}
		}
	})
	return nil
}

// Stop ends supervision. What happens to the instances depends on why the
// plugin instance stops (sdk.StopReasonFrom(ctx)):
//   - StopReplaced: a newer plugin instance already supervises and has
//     adopted them: they keep running, untouched.
//   - StopShutdown: the host exits and loads the plugin again at its next
//     start: they keep running, to be adopted then.
//   - StopUnloaded (final unload, and the zero value): every instance is
//     stopped (SIGTERM, SIGKILL after the grace) and deregistered; the
//     desired state (proc records) stays in the store, so loading the
//     plugin again starts the instances anew.
func (d *Local) Stop(ctx context.Context) error {
	if d.cancel == nil {
		return nil
	}
	d.cancel()
	select {
	case <-d.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	ch := make(chan struct{})
	go func() { d.wg.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-ctx.Done():
		return ctx.Err()
	}
	why := sdk.StopReasonFrom(ctx)
	if why == sdk.StopUnloaded {
		return d.stopEverything(ctx)
	}
	d.log().Infof("driver: stop (%s): instances keep running for the next owner", why)
	return nil
}

// stopEverything ends every instance this driver supervises and forgets
// them, keeping the procs' desired state. It does nothing if another
// plugin instance supervises by now.
func (d *Local) stopEverything(ctx context.Context) error {
	if !d.owner(ctx) {
		d.log().Info("driver: unloaded, but a newer plugin instance supervises: leaving its instances alone")
		return nil
	}
	type target struct {
		p  *proc
		in *inst
	}
	var all []target
	d.mu.Lock()
	for _, p := range d.procs {
		for _, in := range p.insts {
			all = append(all, target{p, in})
		}
	}
	d.mu.Unlock()
	d.log().Infof("driver: unloaded: stopping %d instances (the desired state stays in the store)", len(all))
	return parallel(d, all, func(t target) error { return d.stopInst(ctx, t.p, t.in) })
}

// grace is the time an instance gets between SIGTERM and SIGKILL: the
// configured grace, shortened to fit ctx's deadline.
func (d *Local) grace(ctx context.Context) time.Duration {
	g := d.cfg.StopGrace
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl) - time.Second; left < g {
			g = max(left, 0)
		}
	}
	return g
}

// safeGo runs fn in a goroutine that recovers and is awaited by Stop.
func (d *Local) safeGo(fn func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				d.log().Errorf("driver: panic: %v\n%s", p, debug.Stack())
			}
		}()
		fn()
	}()
}

func (d *Local) owner(ctx context.Context) bool {
	v, err := d.cfg.Store.Get(ctx, keyOwner)
	return err == nil && string(v) == d.id
}

// groupRSS is the resident memory of a process group, from a scan of
// /proc made at most once per tick.
func (d *Local) groupRSS(pgid int) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rss == nil {
		d.rss = rssByGroup()
	}
	return d.rss[pgid]
}

// tick is one supervision pass over every proc not busy with an Apply.
func (d *Local) tick(ctx context.Context) error {
	if !d.owner(ctx) {
		return errNotOwner
	}
	d.mu.Lock()
	d.rss = nil
	d.mu.Unlock()
	d.mu.Lock()
	ps := make([]*proc, 0, len(d.procs))
	for _, p := range d.procs {
		ps = append(ps, p)
	}
	d.mu.Unlock()
	for _, p := range ps {
		if !p.op.TryLock() {
			continue
		}
		err := d.superviseProc(ctx, p)
		p.op.Unlock()
		if errors.Is(err, errNotOwner) {
			return err
		}
		if err != nil && ctx.Err() == nil {
			d.log().Warnf("driver: %s/%s: %v", p.rec.Spec.App, p.rec.Spec.Proc, err)
		}
	}
	d.rotateLogs()
	return nil
}

// superviseProc checks liveness, memory and health of a proc's instances,
// restarts crashed ones with backoff and converges the count and the
// version to the desired spec. The caller holds p.op.
func (d *Local) superviseProc(ctx context.Context, p *proc) error {
	d.mu.Lock()
	want := p.rec.Spec
	hash := want.RunHash()
	list := p.sorted()
	d.mu.Unlock()
	now := time.Now()
	var good []*inst
	for _, in := range list {
		d.mu.Lock()
		state := in.rec.State
		d.mu.Unlock()
		switch state {
		case "running":
			if err := d.checkRunning(ctx, in); err != nil {
				return err
			}
		case "backoff":
			d.mu.Lock()
			due := !now.Before(in.rec.NextRestart)
			wrong := in.rec.Hash != hash
			d.mu.Unlock()
			if wrong {
				if err := d.stopInst(ctx, p, in); err != nil {
					return err
				}
				continue
			}
			if due {
				if err := d.restart(ctx, in); err != nil && !errors.Is(err, errNotOwner) {
					d.log().Warnf("driver: restart %s/%s: %v", in.rec.App, in.rec.ID, err)
				} else if err != nil {
					return err
				}
			}
		}
		d.mu.Lock()
		if in.rec.Hash == hash && !in.stopping {
			good = append(good, in)
		}
		d.mu.Unlock()
	}
	// count and version
	for i := len(good); i < want.NumInstances; i++ {
		if _, err := d.startNew(ctx, p, want); err != nil {
			return err
		}
	}
	d.mu.Lock()
	healthyGood := 0
	for _, in := range good {
		if in.healthy {
			healthyGood++
		}
	}
	var surplus []*inst
	if len(good) > want.NumInstances {
		// stop the newest, unhealthy first
		extra := append([]*inst(nil), good...)
		sort.SliceStable(extra, func(i, j int) bool {
			if extra[i].healthy != extra[j].healthy {
				return extra[i].healthy
			}
			return idLess(extra[i].rec.ID, extra[j].rec.ID)
		})
		surplus = append(surplus, extra[want.NumInstances:]...)
	}
	if healthyGood >= want.NumInstances {
		for _, in := range p.insts {
			if in.rec.Hash != hash && !in.stopping {
				surplus = append(surplus, in)
			}
		}
	}
	d.mu.Unlock()
	for _, in := range surplus {
		if err := d.stopInst(ctx, p, in); err != nil {
			return err
		}
	}
	return nil
}

// checkRunning handles one running instance: exit, memory, health.
func (d *Local) checkRunning(ctx context.Context, in *inst) error {
	d.mu.Lock()
	pid, ticks := in.rec.PID, in.rec.StartTicks
	d.mu.Unlock()
	if ok, why := probeExit(pid, ticks); !ok {
		killGroup(pid, 0, syscall.SIGKILL) // what the leader left behind
		return d.crashed(ctx, in, why)
	}
	d.mu.Lock()
	sp := in.rec.Spec
	d.mu.Unlock()
	if d.lim.watchdog() && sp.Memory > 0 {
		if rss := d.groupRSS(pid); rss > sp.Memory {
			d.log().Warnf("driver: %s/%s uses %d bytes > memory limit %d: killing", in.rec.App, in.rec.ID, rss, sp.Memory)
			killGroup(pid, ticks, syscall.SIGKILL)
			why := fmt.Sprintf("killed: resident memory %d bytes above the limit %d", rss, sp.Memory)
			for i := 0; i < 40; i++ {
				if ok, _ := probeExit(pid, ticks); !ok {
					break
				}
				time.Sleep(25 * time.Millisecond)
			}
			return d.crashed(ctx, in, why)
		}
	}
	d.mu.Lock()
	interval := sp.Health.Interval
	if !in.healthy {
		interval = d.cfg.Tick
	}
	due := !in.probing && time.Since(in.lastProb) >= interval
	if due {
		in.probing = true
		in.lastProb = time.Now()
	}
	d.mu.Unlock()
	if due {
		d.safeGo(func() {
			err := probe(ctx, &sp, in.rec.Port, in.rec.Started)
			d.mu.Lock()
			in.probing = false
			if in.stopping || in.rec.PID != pid {
				d.mu.Unlock()
				return
			}
			was := in.healthy
			if err == nil {
				in.fails, in.healthy, in.lastHealthErr = 0, true, ""
			} else {
				in.fails++
				in.lastHealthErr = err.Error()
				if in.healthy && in.fails >= 3 {
					in.healthy = false
				}
			}
			now := in.healthy
			d.mu.Unlock()
			if now != was {
				d.setRegistered(in, now)
			}
		})
	}
	return nil
}

// crashed records an instance's exit and schedules its restart.
func (d *Local) crashed(ctx context.Context, in *inst, why string) error {
	d.setRegistered(in, false)
	d.mu.Lock()
	r := in.rec
	d.mu.Unlock()
	if time.Since(r.Started) > 30*time.Second {
		r.Restarts = 0 // it ran long enough: start the backoff over
	}
	backoff := 500 * time.Millisecond << min(r.Restarts, 10)
	if backoff > d.cfg.MaxBackoff {
		backoff = d.cfg.MaxBackoff
	}
	if d.lim.oomKilled(r.Cgroups) {
		why += "; out of memory: OOM-killed by the kernel at the cgroup memory limit " + spec.FormatMemory(r.Spec.Memory)
	}
	d.lim.release(r.Cgroups)
	r.Cgroups = nil
	r.State, r.LastExit, r.NextRestart = "backoff", why, time.Now().Add(backoff)
	r.Restarts++
	if err := d.txn(ctx, func(tx sdk.Tx) error { return putJSON(tx, instKey(&r), &r) }); err != nil {
		return err
	}
	d.log().Warnf("driver: %s/%s %s; restart %d in %v", r.App, r.ID, why, r.Restarts, backoff)
	d.mu.Lock()
	in.rec, in.healthy, in.fails, in.adopted = r, false, 0, false
	d.mu.Unlock()
	return nil
}

// restart starts a backed-off instance again with the same id and port.
func (d *Local) restart(ctx context.Context, in *inst) error {
	d.mu.Lock()
	r := in.rec
	d.mu.Unlock()
	return d.spawn(ctx, in, r)
}

// startNew starts a new instance of proc p running s.
func (d *Local) startNew(ctx context.Context, p *proc, s Spec) (*inst, error) {
	port, err := d.allocPort()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	p.rec.NextID++
	id := s.Proc + "-" + strconv.Itoa(p.rec.NextID)
	rec := p.rec
	d.mu.Unlock()
	if err := d.txn(ctx, func(tx sdk.Tx) error { return putJSON(tx, pfxProc+pkey(s.App, s.Proc), &rec) }); err != nil {
		d.freePort(port)
		return nil, err
	}
	r := instRecord{ID: id, App: s.App, Proc: s.Proc, Port: port, Spec: s, Hash: s.RunHash(),
		Log: filepath.Join(d.cfg.DataDir, "logs", s.App, id+".log")}
	in := &inst{rec: r}
	d.mu.Lock()
	p.insts[id] = in
	d.mu.Unlock()
	if err := d.spawn(ctx, in, r); err != nil {
		if errors.Is(err, errNotOwner) {
			d.mu.Lock()
			delete(p.insts, id)
			d.mu.Unlock()
			d.freePort(port)
			return nil, err
		}
		// spawn failures (missing dir, ...) are crashes: backoff and retry
		d.log().Warnf("driver: start %s/%s: %v", s.App, id, err)
	}
	return in, nil
}

// spawn starts the process of an instance and records it, under the owner
// check so that two plugin instances never both start it.
func (d *Local) spawn(ctx context.Context, in *inst, r instRecord) error {
	s := r.Spec
	if err := os.MkdirAll(filepath.Dir(r.Log), 0o755); err != nil {
		return err
	}
	var started bool
	err := d.txn(ctx, func(tx sdk.Tx) error {
		f, err := os.OpenFile(r.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		fmt.Fprintf(f, "--- %s plugd-deploy: starting %s (%s) on port %d\n", time.Now().UTC().Format(time.RFC3339), r.ID, s.MetaVersion, r.Port)
		script := s.Cmd
		if !strings.ContainsAny(script, ";&|\n`$()<>") {
			script = "exec " + script
		}
		cmd := exec.Command(d.cfg.Shell, "-c", script)
		cmd.Dir = s.Dir
		cmd.Env = append([]string(nil), d.cfg.BaseEnv...)
		keys := make([]string, 0, len(s.Env))
		for k := range s.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			cmd.Env = append(cmd.Env, k+"="+s.Env[k])
		}
		cmd.Env = append(cmd.Env,
			"PORT="+strconv.Itoa(r.Port),
			"APP_NAME="+s.App, "PROC_NAME="+s.Proc, "PROC_TYPE="+s.Type,
			"INSTANCE_ID="+r.ID, "META_VERSION="+s.MetaVersion)
		if s.Memory > 0 {
			cmd.Env = append(cmd.Env, "MEMORY_LIMIT="+strconv.FormatInt(s.Memory, 10))
		}
		cmd.Stdout, cmd.Stderr = f, f
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		// The shell waits on fd 3 before it runs the command, so that the
		// process is in its cgroups and without core dumps first. If this
		// side goes away instead, the read fails and the shell exits.
		gateR, gateW, err := os.Pipe()
		if err != nil {
			return err
		}
		defer gateR.Close()
		defer gateW.Close()
		cmd.ExtraFiles = []*os.File{gateR}
		cmd.Args[2] = "read -r _ <&3 || { echo 'plugd-deploy: not released by the supervisor' >&2; exit 97; }; exec 3<&-\n" + script
		cgs, done, err := d.lim.prepare(&s, r.ID, cmd)
		if err != nil {
			fmt.Fprintf(f, "--- plugd-deploy: start failed: %v\n", err)
			return err
		}
		err = cmd.Start()
		done()
		if err != nil {
			d.lim.release(cgs)
			fmt.Fprintf(f, "--- plugd-deploy: start failed: %v\n", err)
			return err
		}
		pid := cmd.Process.Pid
		_ = cmd.Process.Release() // reaped with wait4 by whoever supervises
		ticks, _, terr := startTicks(pid)
		if terr != nil {
			ticks = 0
		}
		abort := func(err error) error {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100; i++ {
				if ok, _ := probeExit(pid, ticks); !ok {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			d.lim.release(cgs)
			fmt.Fprintf(f, "--- plugd-deploy: start failed: %v\n", err)
			return err
		}
		if err := d.lim.place(pid, cgs); err != nil {
			return abort(err)
		}
		noCores(pid)
		r.PID, r.StartTicks, r.Started, r.State, r.NextRestart, r.Cgroups = pid, ticks, time.Now(), "running", time.Time{}, cgs
		if err := putJSON(tx, instKey(&r), &r); err != nil {
			return abort(err)
		}
		if _, err := gateW.Write([]byte("go\n")); err != nil {
			return abort(fmt.Errorf("release the process: %v", err))
		}
		started = true
		d.mu.Lock()
		in.rec, in.healthy, in.fails, in.adopted = r, false, 0, false
		in.lastProb, in.lastHealthErr = time.Time{}, ""
		d.mu.Unlock()
		return nil
	})
	if err != nil && !started && !errors.Is(err, errNotOwner) {
		// record the failure as a crash so the supervisor retries later
		r.State, r.LastExit = "running", "start failed: "+err.Error()
		d.mu.Lock()
		in.rec = r
		d.mu.Unlock()
		_ = d.crashed(ctx, in, "start failed: "+err.Error())
	}
	return err
}

// stopInst stops an instance (SIGTERM to its group, SIGKILL after the
// grace) and forgets it.
func (d *Local) stopInst(ctx context.Context, p *proc, in *inst) error {
	d.mu.Lock()
	if in.stopping {
		d.mu.Unlock()
		return nil
	}
	r := in.rec
	d.mu.Unlock()
	// a superseded plugin instance must not touch what the new one adopted
	if !d.owner(ctx) {
		return errNotOwner
	}
	d.mu.Lock()
	if in.stopping {
		d.mu.Unlock()
		return nil
	}
	in.stopping = true
	d.mu.Unlock()
	d.setRegistered(in, false)
	if r.State == "running" {
		stopProcess(r.PID, r.StartTicks, d.grace(ctx))
	}
	err := d.txn(ctx, func(tx sdk.Tx) error { return tx.Delete(instKey(&r)) })
	d.lim.release(r.Cgroups)
	d.mu.Lock()
	delete(p.insts, r.ID)
	d.mu.Unlock()
	d.freePort(r.Port)
	d.pruneLogs(r.App)
	return err
}

// stopProcess ends the process group of pid and reaps it.
func stopProcess(pid int, ticks uint64, grace time.Duration) {
	if ok, _ := probeExit(pid, ticks); !ok {
		return
	}
	killGroup(pid, ticks, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if ok, _ := probeExit(pid, ticks); !ok {
			killGroup(pid, 0, syscall.SIGKILL) // leftovers of the group
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	killGroup(pid, ticks, syscall.SIGKILL)
	for i := 0; i < 100; i++ {
		if ok, _ := probeExit(pid, ticks); !ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killGroup signals the process group led by pid, but only if pid is still
// the process that started at ticks (ticks 0: the leader is gone; signal
// the remaining group members if the group still exists).
func killGroup(pid int, ticks uint64, sig syscall.Signal) {
	if pid <= 1 {
		return
	}
	if ticks != 0 {
		t, _, err := startTicks(pid)
		if err != nil || t != ticks {
			return
		}
	}
	_ = syscall.Kill(-pid, sig)
}

// setRegistered adds or removes a web instance in the service registry.
func (d *Local) setRegistered(in *inst, on bool) {
	d.mu.Lock()
	r := in.rec
	d.mu.Unlock()
	if !r.Spec.Web() || r.Spec.Service == "" || d.cfg.Services == nil {
		return
	}
	// a late probe of a superseded plugin instance must not undo what the
	// new owner registered
	if !d.owner(context.Background()) {
		return
	}
	id := r.App + "/" + r.ID
	if !on {
		_ = d.cfg.Services.Deregister(r.Spec.Service, id)
		return
	}
	err := d.cfg.Services.Register(sdk.Instance{ID: id, Service: r.Spec.Service,
		Address: "127.0.0.1:" + strconv.Itoa(r.Port), Weight: 1,
		Metadata: map[string]string{"app": r.App, "proc": r.Proc, "meta_version": r.Spec.MetaVersion, "pid": strconv.Itoa(r.PID)}})
	if err != nil {
		d.log().Warnf("driver: register %s: %v", id, err)
	}
}

func (d *Local) allocPort() (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("driver: allocate port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		d.mu.Lock()
		taken := d.ports[port]
		if !taken {
			d.ports[port] = true
		}
		d.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, fmt.Errorf("driver: no free port")
}

func (d *Local) freePort(port int) {
	d.mu.Lock()
	delete(d.ports, port)
	d.mu.Unlock()
}

// probe checks an instance's health once.
func probe(ctx context.Context, s *Spec, port int, started time.Time) error {
	if !s.Web() {
		if time.Since(started) < s.Health.Grace {
			return fmt.Errorf("up for less than %v", s.Health.Grace)
		}
		return nil
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithTimeout(ctx, s.Health.Timeout)
	defer cancel()
	if s.Health.Path == "" {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("tcp %s: %v", addr, err)
		}
		return c.Close()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+s.Health.Path, nil)
	if err != nil {
		return err
	}
	resp, err := probeClient.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %v", s.Health.Path, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s: status %d", s.Health.Path, resp.StatusCode)
	}
	return nil
}

var probeClient = &http.Client{
	Transport:     &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func (p *proc) sorted() []*inst {
	out := make([]*inst, 0, len(p.insts))
	for _, in := range p.insts {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return idLess(out[i].rec.ID, out[j].rec.ID) })
	return out
}

// idLess orders "<proc>-<n>" ids by n.
func idLess(a, b string) bool {
	na, _ := strconv.Atoi(a[strings.LastIndexByte(a, '-')+1:])
	nb, _ := strconv.Atoi(b[strings.LastIndexByte(b, '-')+1:])
	if na != nb {
		return na < nb
	}
	return a < b
}
