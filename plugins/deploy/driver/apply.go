package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/plugd/plugd/sdk"
)

func (d *Local) getProc(app, name string, create bool) *proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[pkey(app, name)]
	if p == nil && create {
		p = &proc{insts: map[string]*inst{}}
		p.rec.Spec = Spec{App: app, Proc: name}
		d.procs[pkey(app, name)] = p
	}
	return p
}

func (d *Local) saveProc(ctx context.Context, p *proc) error {
	d.mu.Lock()
	rec := p.rec
	d.mu.Unlock()
	return d.txn(ctx, func(tx sdk.Tx) error { return putJSON(tx, pfxProc+pkey(rec.Spec.App, rec.Spec.Proc), &rec) })
}

// Apply implements Driver.
func (d *Local) Apply(ctx context.Context, s Spec, progress func(string)) error {
	if progress == nil {
		progress = func(string) {}
	}
	if s.NumInstances < 0 {
		return fmt.Errorf("num_instances %d < 0", s.NumInstances)
	}
	if st, err := os.Stat(s.Dir); err != nil || !st.IsDir() {
		return fmt.Errorf("release directory %q: not a directory", s.Dir)
	}
	p := d.getProc(s.App, s.Proc, true)
	p.op.Lock()
	defer p.op.Unlock()
	d.mu.Lock()
	p.gone = false
	old := p.rec.Spec
	hash := s.RunHash()
	var stale []*inst
	for _, in := range p.sorted() {
		if in.rec.Hash != hash {
			stale = append(stale, in)
		}
	}
	d.mu.Unlock()
	if len(stale) == 0 {
		// only the count changes (or nothing)
		d.mu.Lock()
		p.rec.Spec, p.rec.Prev, p.rec.Rolling = s, nil, false
		d.mu.Unlock()
		if err := d.saveProc(ctx, p); err != nil {
			return err
		}
		return d.scale(ctx, p, s, progress)
	}
	var prev *Spec
	if old.Cmd != "" && old.NumInstances > 0 {
		prev = &old
	}
	d.mu.Lock()
	p.rec.Spec, p.rec.Prev, p.rec.Rolling = s, prev, true
	d.mu.Unlock()
	if err := d.saveProc(ctx, p); err != nil {
		return err
	}
	progress(fmt.Sprintf("rolling out %s to %d instance(s), one at a time", s.MetaVersion, s.NumInstances))
	var fresh []*inst // new instances started by this rollout
	fail := func(cause error) error {
		if errors.Is(cause, errNotOwner) {
			return cause
		}
		// roll back: bring back one old-spec instance per replaced one,
		// then stop everything this rollout started
		d.mu.Lock()
		if prev != nil {
			p.rec.Spec = *prev
		} else {
			p.rec.Spec.NumInstances = 0
		}
		p.rec.Prev, p.rec.Rolling = nil, false
		back := p.rec.Spec
		d.mu.Unlock()
		if err := d.saveProc(ctx, p); err != nil {
			return fmt.Errorf("%v; rollback failed: %w", cause, err)
		}
		if prev == nil {
			progress("first deploy failed: stopping its instances")
			for _, in := range fresh {
				_ = d.stopInst(ctx, p, in)
			}
			return cause
		}
		progress("rolling back to " + prev.MetaVersion)
		if err := d.scaleToHash(ctx, p, back, progress); err != nil {
			return fmt.Errorf("%v; rolled back to %s, but: %v", cause, prev.MetaVersion, err)
		}
		return fmt.Errorf("%v; rolled back to %s", cause, prev.MetaVersion)
	}
	for i, o := range stale {
		if i < s.NumInstances {
			in, err := d.startNew(ctx, p, s)
			if err != nil {
				return fail(err)
			}
			fresh = append(fresh, in)
			if err := d.waitHealthy(ctx, in, true); err != nil {
				_ = d.stopInst(ctx, p, in)
				return fail(err)
			}
			progress(fmt.Sprintf("%s healthy (%s); stopping %s", in.rec.ID, s.MetaVersion, o.rec.ID))
		}
		if err := d.stopInst(ctx, p, o); err != nil {
			return fail(err)
		}
	}
	if err := d.scale(ctx, p, s, progress); err != nil {
		return fail(err)
	}
	d.mu.Lock()
	p.rec.Prev, p.rec.Rolling = nil, false
	d.mu.Unlock()
	if err := d.saveProc(ctx, p); err != nil {
		return err
	}
	progress(fmt.Sprintf("%s runs %s on %d instance(s)", s.Proc, s.MetaVersion, s.NumInstances))
	return nil
}

// scale brings the number of instances running s to s.NumInstances and
// waits for the new ones to be healthy. The caller holds p.op.
func (d *Local) scale(ctx context.Context, p *proc, s Spec, progress func(string)) error {
	hash := s.RunHash()
	d.mu.Lock()
	var cur []*inst
	for _, in := range p.sorted() {
		if in.rec.Hash == hash && !in.stopping {
			cur = append(cur, in)
		}
	}
	d.mu.Unlock()
	switch {
	case len(cur) < s.NumInstances:
		n := s.NumInstances - len(cur)
		progress(fmt.Sprintf("starting %d instance(s) of %s", n, s.Proc))
		var fresh []*inst
		for i := 0; i < n; i++ {
			in, err := d.startNew(ctx, p, s)
			if err != nil {
				return err
			}
			fresh = append(fresh, in)
		}
		// also wait for existing instances that are not healthy yet
		var older []*inst
		for _, in := range cur {
			d.mu.Lock()
			h := in.healthy
			d.mu.Unlock()
			if !h {
				older = append(older, in)
			}
		}
		return errors.Join(d.waitAll(ctx, fresh, true), d.waitAll(ctx, older, false))
	case len(cur) > s.NumInstances:
		extra := cur[s.NumInstances:]
		progress(fmt.Sprintf("stopping %d instance(s) of %s", len(extra), s.Proc))
		return d.stopAll(ctx, p, extra)
	}
	var pending []*inst
	for _, in := range cur {
		d.mu.Lock()
		if !in.healthy {
			pending = append(pending, in)
		}
		d.mu.Unlock()
	}
	return d.waitAll(ctx, pending, false)
}

// scaleToHash is scale for a rollback: start instances of s, then stop
// every instance that runs something else.
func (d *Local) scaleToHash(ctx context.Context, p *proc, s Spec, progress func(string)) error {
	err := d.scale(ctx, p, s, progress)
	hash := s.RunHash()
	d.mu.Lock()
	var other []*inst
	for _, in := range p.insts {
		if in.rec.Hash != hash {
			other = append(other, in)
		}
	}
	d.mu.Unlock()
	if e := d.stopAll(ctx, p, other); err == nil {
		err = e
	}
	return err
}

func (d *Local) stopAll(ctx context.Context, p *proc, list []*inst) error {
	return parallel(d, list, func(in *inst) error { return d.stopInst(ctx, p, in) })
}

func (d *Local) waitAll(ctx context.Context, list []*inst, fresh bool) error {
	return parallel(d, list, func(in *inst) error { return d.waitHealthy(ctx, in, fresh) })
}

// parallel runs fn on every item at once and joins the errors.
func parallel[T any](d *Local, list []T, fn func(T) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(list))
	for i, x := range list {
		wg.Add(1)
		d.safeGo(func() {
			defer wg.Done()
			errs[i] = fn(x)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitHealthy waits until the instance passes its health check, fails if
// it exits or stays unhealthy past its start timeout. The caller holds the
// proc's op lock, so the supervisor is not watching this instance.
func (d *Local) waitHealthy(ctx context.Context, in *inst, fresh bool) error {
	d.mu.Lock()
	r := in.rec
	d.mu.Unlock()
	deadline := time.Now().Add(r.Spec.Health.Start)
	var last error
	for {
		d.mu.Lock()
		r = in.rec
		d.mu.Unlock()
		if r.State != "running" {
			if fresh {
				return fmt.Errorf("instance %s did not start: %s%s", r.ID, r.LastExit, logTail(r.Log, 5))
			}
			// an older instance in backoff: restart it when due (the
			// supervisor leaves this proc alone while we hold its lock)
			last = fmt.Errorf("in backoff after: %s", r.LastExit)
			if !time.Now().Before(r.NextRestart) {
				if err := d.restart(ctx, in); errors.Is(err, errNotOwner) {
					return err
				}
			}
		} else if ok, why := probeExit(r.PID, r.StartTicks); !ok {
			killGroup(r.PID, 0, syscall.SIGKILL) // what the leader left behind
			_ = d.crashed(ctx, in, why)
			if fresh {
				return fmt.Errorf("instance %s %s before becoming healthy%s", r.ID, why, logTail(r.Log, 5))
			}
			last = fmt.Errorf("%s", why)
		} else if last = probe(ctx, &r.Spec, r.Port, r.Started); last == nil {
			d.mu.Lock()
			in.healthy, in.fails, in.lastProb, in.lastHealthErr = true, 0, time.Now(), ""
			d.mu.Unlock()
			d.setRegistered(in, true)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instance %s not healthy within %v: %v%s", r.ID, r.Spec.Health.Start, last, logTail(r.Log, 5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("instance %s: %w", r.ID, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail is the last n lines of a log, for error messages.
func logTail(path string, n int) string {
	lines, err := tailLines(path, n)
	if err != nil || len(lines) == 0 {
		return ""
	}
	return "; last output: " + strings.Join(lines, " | ")
}

// Remove implements Driver.
func (d *Local) Remove(ctx context.Context, app, name string) error {
	p := d.getProc(app, name, false)
	if p == nil {
		return nil
	}
	p.op.Lock()
	defer p.op.Unlock()
	d.mu.Lock()
	list := p.sorted()
	d.mu.Unlock()
	if err := d.stopAll(ctx, p, list); err != nil {
		return err
	}
	if err := d.txn(ctx, func(tx sdk.Tx) error { return tx.Delete(pfxProc + pkey(app, name)) }); err != nil {
		return err
	}
	d.mu.Lock()
	if len(p.insts) == 0 {
		delete(d.procs, pkey(app, name))
		p.gone = true
	}
	d.mu.Unlock()
	return nil
}

// Status implements Driver.
func (d *Local) Status(app, name string) (ProcStatus, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.procs[pkey(app, name)]
	if p == nil {
		return ProcStatus{}, false
	}
	s := p.rec.Spec
	st := ProcStatus{App: app, Proc: name, MetaVersion: s.MetaVersion, Desired: s.NumInstances, Instances: []InstanceStatus{}}
	if d.lim != nil {
		st.Limits = d.lim.describe(&s)
	}
	for _, in := range p.sorted() {
		r := in.rec
		is := InstanceStatus{ID: r.ID, PID: r.PID, Port: r.Port, MetaVersion: r.Spec.MetaVersion, State: r.State,
			Healthy: in.healthy, Started: r.Started, Restarts: r.Restarts, LastExit: r.LastExit, Adopted: in.adopted}
		if in.stopping {
			is.State = "stopping"
		}
		if r.State == "running" {
			st.Running++
			is.RSS = rssBytes(r.PID)
			if r.Spec.Web() {
				is.Address = fmt.Sprintf("127.0.0.1:%d", r.Port)
			}
		} else {
			is.PID = 0
		}
		if in.healthy {
			st.Healthy++
		}
		st.Instances = append(st.Instances, is)
	}
	return st, true
}
