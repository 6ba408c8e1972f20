package console

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/sdk"
)

// Operation states.
const (
	OpPending   = "pending"
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
)

// Operation is one asynchronous change of an app.
type Operation struct {
	ID       string                 `json:"id"`
	App      string                 `json:"appname"`
	Kind     string                 `json:"kind"` // deploy, update, undeploy, deploy-proc, scale, resize, undeploy-proc
	State    string                 `json:"state"`
	Request  map[string]any         `json:"request,omitempty"`
	User     string                 `json:"user"`
	Created  time.Time              `json:"created"`
	Started  *time.Time             `json:"started,omitempty"`
	Finished *time.Time             `json:"finished,omitempty"`
	Procs    map[string]*ProcResult `json:"procs"`
	Messages []string               `json:"messages"`
	Error    string                 `json:"error,omitempty"`
	Instance string                 `json:"plugin_instance"`
}

// ProcResult is what an operation did to one proc.
type ProcResult struct {
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// opRun is a running operation; its methods record progress.
type opRun struct {
	c  *Console
	mu sync.Mutex
	op Operation
}

func (o *opRun) save() {
	o.mu.Lock()
	op := o.op
	procs := make(map[string]*ProcResult, len(op.Procs))
	for k, v := range op.Procs {
		vv := *v
		procs[k] = &vv
	}
	op.Procs = procs
	op.Messages = append([]string(nil), op.Messages...)
	o.mu.Unlock()
	var opts []sdk.PutOption
	if op.Finished != nil {
		opts = append(opts, sdk.WithTTL(o.c.cfg.OperationTTL))
	}
	err := o.c.h.Store().Update(context.Background(), func(tx sdk.Tx) error { return txPut(tx, pfxOp+op.ID, &op, opts...) })
	if err != nil {
		o.c.h.Logger().Errorf("save operation %s: %v", op.ID, err)
	}
}

func (o *opRun) msg(format string, args ...any) {
	o.mu.Lock()
	if len(o.op.Messages) < 500 {
		o.op.Messages = append(o.op.Messages, time.Now().UTC().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
	o.mu.Unlock()
	o.save()
}

func (o *opRun) proc(name, state string, err error) {
	o.mu.Lock()
	pr := o.op.Procs[name]
	if pr == nil {
		pr = &ProcResult{}
		o.op.Procs[name] = pr
	}
	pr.State = state
	if err != nil {
		pr.Error = err.Error()
	}
	o.mu.Unlock()
	o.save()
}

func (o *opRun) progress(proc string) func(string) {
	return func(s string) { o.msg("%s: %s", proc, s) }
}

func newID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%s", time.Now().UnixNano(), hex.EncodeToString(b))
}

func (c *Console) lockFor(app string) *sync.Mutex {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	m := c.appLock[app]
	if m == nil {
		m = &sync.Mutex{}
		c.appLock[app] = m
	}
	return m
}

// submit records a pending operation, answers 202 with it and runs fn in
// the background, one operation per app at a time.
func (c *Console) submit(w http.ResponseWriter, app, kind, user string, req map[string]any, fn func(ctx context.Context, o *opRun) error) error {
	o := &opRun{c: c, op: Operation{ID: newID(), App: app, Kind: kind, State: OpPending, Request: req, User: user,
		Created: time.Now().UTC(), Procs: map[string]*ProcResult{}, Messages: []string{}, Instance: c.id}}
	o.save()
	err := c.h.Store().Update(context.Background(), func(tx sdk.Tx) error {
		var a App
		if txGet(tx, pfxApp+app, &a) != nil {
			return nil
		}
		a.LastOp = o.op.ID
		return txPut(tx, pfxApp+app, &a)
	})
	if err != nil {
		return err
	}
	c.opWG.Add(1)
	c.h.Go("deploy-op-"+o.op.ID, func(context.Context) {
		defer c.opWG.Done()
		c.runOp(o, fn)
	})
	sdk.WriteJSON(w, http.StatusAccepted, map[string]any{
		"operation": o.op.ID, "state": OpPending, "kind": kind, "appname": app,
		"url": "/api/v1/operations/" + o.op.ID,
	})
	return nil
}

func (c *Console) runOp(o *opRun, fn func(ctx context.Context, o *opRun) error) {
	lk := c.lockFor(o.op.App)
	locked := make(chan struct{})
	go func() { lk.Lock(); close(locked) }()
	select {
	case <-locked:
	case <-c.opCtx.Done():
		go func() { <-locked; lk.Unlock() }()
		c.finish(o, errors.New("interrupted: the plugin instance stopped before the operation ran"))
		return
	}
	defer lk.Unlock()
	now := time.Now().UTC()
	o.mu.Lock()
	o.op.State, o.op.Started = OpRunning, &now
	o.mu.Unlock()
	o.save()
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("internal error: %v", p)
				c.h.Logger().Errorf("operation %s panicked: %v", o.op.ID, p)
			}
		}()
		err = fn(c.opCtx, o)
	}()
	if err != nil && c.opCtx.Err() != nil {
		err = fmt.Errorf("interrupted by a swap or stop of the plugin (%v); the next instance restores the desired state", err)
	}
	c.finish(o, err)
}

func (c *Console) finish(o *opRun, err error) {
	now := time.Now().UTC()
	o.mu.Lock()
	o.op.Finished = &now
	if err != nil {
		o.op.State, o.op.Error = OpFailed, err.Error()
	} else {
		o.op.State = OpSucceeded
	}
	o.mu.Unlock()
	o.save()
	if err != nil {
		c.h.Logger().Warnf("operation %s (%s %s) failed: %v", o.op.ID, o.op.Kind, o.op.App, err)
	}
}

// failOrphans marks operations left pending or running by another plugin
// instance (or a previous host) as failed.
func (c *Console) failOrphans(ctx context.Context) error {
	kvs, err := c.h.Store().List(ctx, pfxOp)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		var op Operation
		if jsonUnmarshal(kv.Value, &op) != nil || op.Instance == c.id {
			continue
		}
		if op.State == OpPending || op.State == OpRunning {
			now := time.Now().UTC()
			op.State, op.Finished = OpFailed, &now
			op.Error = "interrupted: the plugin was swapped or the host restarted while it ran; the desired state was restored"
			_ = c.h.Store().Update(ctx, func(tx sdk.Tx) error { return txPut(tx, kv.Key, &op, sdk.WithTTL(c.cfg.OperationTTL)) })
		}
	}
	return nil
}

func (c *Console) operation(ctx context.Context, id string) (*Operation, error) {
	var op Operation
	if err := getJSON(ctx, c.h.Store(), pfxOp+id, &op); err != nil {
		if errors.Is(err, sdk.ErrNotFound) {
			return nil, sdk.Errorf(http.StatusNotFound, "no operation %q", id)
		}
		return nil, err
	}
	return &op, nil
}

func (c *Console) getOp(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	op, err := c.operation(r.Context(), ps.ByName("id"))
	if err != nil {
		return err
	}
	sdk.WriteJSON(w, http.StatusOK, op)
	return nil
}

func (c *Console) getAppOp(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	op, err := c.operation(r.Context(), ps.ByName("id"))
	if err != nil {
		return err
	}
	if op.App != ps.ByName("app") {
		return sdk.Errorf(http.StatusNotFound, "no operation %q on %q", op.ID, ps.ByName("app"))
	}
	sdk.WriteJSON(w, http.StatusOK, op)
	return nil
}

func (c *Console) listAppOps(w http.ResponseWriter, r *http.Request, ps httprouter.Params, _ *caller) error {
	app := ps.ByName("app")
	if _, err := c.repo(r.Context(), app); err != nil {
		return err
	}
	kvs, err := c.h.Store().List(r.Context(), pfxOp)
	if err != nil {
		return err
	}
	out := []Operation{}
	for _, kv := range kvs {
		var op Operation
		if jsonUnmarshal(kv.Value, &op) == nil && op.App == app {
			out = append(out, op)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	sdk.WriteJSON(w, http.StatusOK, out)
	return nil
}

// Start marks orphaned operations and starts the driver.
func (c *Console) Start(ctx context.Context) error {
	if err := c.drv.Start(ctx); err != nil {
		return err
	}
	return c.failOrphans(ctx)
}

// Stop cancels running operations, waits for them and stops the driver,
// which keeps the instances running on a swap or host shutdown and stops
// them on a final unload (the reason is in ctx).
func (c *Console) Stop(ctx context.Context) error {
	c.opStop()
	ch := make(chan struct{})
	go func() { c.opWG.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-ctx.Done():
	}
	return c.drv.Stop(ctx)
}
