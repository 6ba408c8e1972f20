// Package control is the gateway's control plane: it keeps the durable
// state (service configs, programs, global variables) in the plugin's store,
// merges static upstreams from the YAML config with the shared service
// registry, and applies every change to the data plane at once.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/plugins/gateway/proxy"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// Store key prefixes.
const (
	keyConfig  = "config/"
	keyProgram = "program/"
	keyVar     = "var/"
)

// ErrUnknownService is returned for a service the gateway does not know.
var ErrUnknownService = errors.New("unknown service")

// Control owns the gateway's durable state.
type Control struct {
	GW    *proxy.Gateway
	store sdk.Store
	reg   sdk.ServiceRegistry
	plug  conf.Plugin
	log   logrus.FieldLogger

	mu       sync.Mutex
	configs  map[string]conf.Service                // stored per-service configs
	programs map[string]map[string]*program.Program // service -> name -> program
	vars     map[string]any
	regSvcs  map[string]bool // services seen in the registry

	dirtyMu sync.Mutex
	dirty   map[string]any // globals set by programs, not yet stored
}

// New builds the control plane and its data plane.
func New(plug conf.Plugin, store sdk.Store, reg sdk.ServiceRegistry, slps sdk.SLPs, log logrus.FieldLogger) *Control {
	c := &Control{store: store, reg: reg, plug: plug, log: log,
		configs: map[string]conf.Service{}, programs: map[string]map[string]*program.Program{},
		vars: map[string]any{}, regSvcs: map[string]bool{}, dirty: map[string]any{}}
	c.GW = proxy.New(proxy.Options{Prefix: plug.Prefix, MaxIdleConnsPerHost: plug.MaxIdleConnsPerHost,
		SLPs: slps, Logger: log, SetGlobal: c.programSetGlobal})
	return c
}

// Load reads the store and the registry and builds every service.
func (c *Control) Load(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	kvs, err := c.store.List(ctx, keyConfig)
	if err != nil {
		return fmt.Errorf("reading service configs: %w", err)
	}
	for _, kv := range kvs {
		var sc conf.Service
		if err := json.Unmarshal(kv.Value, &sc); err != nil || sc.Normalize() != nil {
			c.log.Warnf("ignoring unreadable stored config %s", kv.Key)
			continue
		}
		c.configs[strings.TrimPrefix(kv.Key, keyConfig)] = sc
	}
	if kvs, err = c.store.List(ctx, keyProgram); err != nil {
		return fmt.Errorf("reading programs: %w", err)
	}
	for _, kv := range kvs {
		var sp program.Spec
		if err := json.Unmarshal(kv.Value, &sp); err != nil {
			c.log.Warnf("ignoring unreadable stored program %s", kv.Key)
			continue
		}
		p, err := program.Compile(sp)
		if err != nil {
			c.log.Warnf("ignoring stored program %s: %v", kv.Key, err)
			continue
		}
		if c.programs[sp.ServiceName] == nil {
			c.programs[sp.ServiceName] = map[string]*program.Program{}
		}
		c.programs[sp.ServiceName][sp.Name] = p
	}
	if kvs, err = c.store.List(ctx, keyVar); err != nil {
		return fmt.Errorf("reading variables: %w", err)
	}
	for _, kv := range kvs {
		var v any
		if err := json.Unmarshal(kv.Value, &v); err == nil {
			c.vars[strings.TrimPrefix(kv.Key, keyVar)] = v
		}
	}
	c.GW.SetGlobals(c.vars)

	names := map[string]bool{}
	for n := range c.plug.Services {
		names[n] = true
	}
	for n := range c.configs {
		names[n] = true
	}
	for n := range c.programs {
		names[n] = true
	}
	for _, n := range c.reg.Services() {
		if conf.ValidName(n) {
			names[n] = true
			c.regSvcs[n] = true
		}
	}
	for n := range names {
		if err := c.applyLocked(n); err != nil {
			return err
		}
	}
	return nil
}

// effective returns the config a service runs with and whether it is the
// default; c.mu must be held.
func (c *Control) effective(name string) (conf.Service, bool) {
	if sc, ok := c.configs[name]; ok {
		return sc, false
	}
	if st, ok := c.plug.Services[name]; ok && st.Config != nil {
		return *st.Config, false
	}
	return c.Default(), true
}

// Default is the config of services without their own.
func (c *Control) Default() conf.Service {
	if c.plug.Default != nil {
		return *c.plug.Default
	}
	return conf.Default()
}

func (c *Control) instances(name string) []sdk.Instance {
	var out []sdk.Instance
	if st, ok := c.plug.Services[name]; ok {
		for i, u := range st.Upstreams {
			id := u.ID
			if id == "" {
				id = fmt.Sprintf("static-%d", i)
			}
			out = append(out, sdk.Instance{ID: id, Service: name, Hostname: u.Hostname,
				Address: u.Address, Weight: u.Weight, Metadata: u.Metadata})
		}
	}
	out = append(out, c.reg.Instances(name)...)
	return out
}

// applyLocked pushes everything known about a service to the data plane.
func (c *Control) applyLocked(name string) error {
	cfg, def := c.effective(name)
	if err := c.GW.SetConfig(name, cfg, def); err != nil {
		return fmt.Errorf("service %s: %w", name, err)
	}
	if err := c.GW.SetInstances(name, c.instances(name)); err != nil {
		return err
	}
	if err := c.GW.SetPrograms(name, c.programList(name)); err != nil {
		return err
	}
	var hc *conf.HealthCheck
	if st, ok := c.plug.Services[name]; ok {
		hc = st.HealthCheck
	}
	c.GW.SetHealthCheck(name, hc)
	return nil
}

func (c *Control) programList(name string) []*program.Program {
	m := c.programs[name]
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*program.Program, 0, len(keys))
	for _, k := range keys {
		out = append(out, m[k])
	}
	return out
}

// known reports whether name is a service; c.mu must be held.
func (c *Control) known(name string) bool { return c.GW.Has(name) }

// SyncRegistry re-reads the shared registry and updates the instances of
// every service it lists or listed.
func (c *Control) SyncRegistry() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := map[string]bool{}
	for _, n := range c.reg.Services() {
		if conf.ValidName(n) {
			now[n] = true
		}
	}
	for n := range c.regSvcs {
		if !now[n] {
			now[n] = false
		}
	}
	for n, live := range now {
		if live && !c.GW.Has(n) {
			if err := c.applyLocked(n); err != nil {
				c.log.Warnf("registry sync: %v", err)
			}
			continue
		}
		if err := c.GW.SetInstances(n, c.instances(n)); err != nil {
			c.log.Warnf("registry sync: %v", err)
		}
		if !live {
			delete(c.regSvcs, n)
			_, static := c.plug.Services[n]
			_, stored := c.configs[n]
			if !static && !stored && len(c.programs[n]) == 0 {
				c.GW.Remove(n)
			}
		} else {
			c.regSvcs[n] = true
		}
	}
}

// WatchRegistry keeps the instances in sync with the registry until ctx ends.
func (c *Control) WatchRegistry(ctx context.Context) {
	ch := c.reg.Watch(ctx)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-t.C:
		}
		c.SyncRegistry()
	}
}

// Config returns a service's config and whether it is the default; with
// name "" the default config.
func (c *Control) Config(name string) (conf.Service, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if name == "" {
		return c.Default(), true, nil
	}
	if !c.known(name) {
		return conf.Service{}, false, ErrUnknownService
	}
	cfg, def := c.effective(name)
	return cfg, def, nil
}

// UpdateConfig changes part of a service's config with edit, stores it and
// applies it to live traffic.
func (c *Control) UpdateConfig(ctx context.Context, name string, edit func(*conf.Service)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known(name) {
		return ErrUnknownService
	}
	cfg, _ := c.effective(name)
	edit(&cfg)
	if err := cfg.Normalize(); err != nil {
		return &BadRequest{err}
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := c.store.Put(ctx, keyConfig+name, b); err != nil {
		return fmt.Errorf("storing config of %s: %w", name, err)
	}
	c.configs[name] = cfg
	return c.applyLocked(name)
}

// BadRequest marks an error caused by the request's content.
type BadRequest struct{ Err error }

func (e *BadRequest) Error() string { return e.Err.Error() }
func (e *BadRequest) Unwrap() error { return e.Err }

// Variables returns the global variables.
func (c *Control) Variables() map[string]any {
	c.flushDirty(context.Background())
	return c.GW.Globals()
}

// SetVariable stores and applies a global variable.
func (c *Control) SetVariable(ctx context.Context, key string, value any) error {
	b, err := json.Marshal(value)
	if err != nil {
		return &BadRequest{err}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.store.Put(ctx, keyVar+key, b); err != nil {
		return fmt.Errorf("storing variable %s: %w", key, err)
	}
	c.dirtyMu.Lock()
	delete(c.dirty, key)
	c.dirtyMu.Unlock()
	vars := c.GW.Globals()
	vars[key] = value
	c.GW.SetGlobals(vars)
	return nil
}

// DeleteVariable removes a global variable; false if it did not exist.
func (c *Control) DeleteVariable(ctx context.Context, key string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	vars := c.GW.Globals()
	if _, ok := vars[key]; !ok {
		return false, nil
	}
	if err := c.store.Delete(ctx, keyVar+key); err != nil {
		return false, fmt.Errorf("deleting variable %s: %w", key, err)
	}
	c.dirtyMu.Lock()
	delete(c.dirty, key)
	c.dirtyMu.Unlock()
	delete(vars, key)
	c.GW.SetGlobals(vars)
	return true, nil
}

// programSetGlobal is set_global from a program: applied at once (the data
// plane did), stored by the next flush so requests never wait on the store.
func (c *Control) programSetGlobal(k string, v any) {
	c.dirtyMu.Lock()
	c.dirty[k] = v
	c.dirtyMu.Unlock()
}

func (c *Control) flushDirty(ctx context.Context) {
	c.dirtyMu.Lock()
	d := c.dirty
	c.dirty = map[string]any{}
	c.dirtyMu.Unlock()
	for k, v := range d {
		b, err := json.Marshal(v)
		if err != nil {
			continue
		}
		if err := c.store.Put(ctx, keyVar+k, b); err != nil {
			c.log.Warnf("storing variable %s: %v", k, err)
		}
	}
}

// FlushVariables stores variables set by programs every second until ctx
// ends, then once more.
func (c *Control) FlushVariables(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.flushDirty(context.Background())
			return
		case <-t.C:
			c.flushDirty(ctx)
		}
	}
}

// Flush stores pending variables now (used by Stop).
func (c *Control) Flush(ctx context.Context) { c.flushDirty(ctx) }

// Programs returns the program specs of one service, or of all when name
// is "", keyed by service.
func (c *Control) Programs(name string) (map[string][]program.Spec, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]program.Spec{}
	for svc := range c.programs {
		if name != "" && svc != name {
			continue
		}
		for _, p := range c.programList(svc) {
			out[svc] = append(out[svc], p.Spec)
		}
	}
	if name != "" {
		if !c.known(name) {
			return nil, ErrUnknownService
		}
		if out[name] == nil {
			out[name] = []program.Spec{}
		}
	}
	return out, nil
}

// SetProgram compiles, stores and applies a program.
func (c *Control) SetProgram(ctx context.Context, sp program.Spec) error {
	p, err := program.Compile(sp)
	if err != nil {
		return &BadRequest{fmt.Errorf("program %s: %w", sp.Name, err)}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.known(sp.ServiceName) {
		return ErrUnknownService
	}
	b, _ := json.Marshal(sp)
	if err := c.store.Put(ctx, keyProgram+sp.ServiceName+"/"+sp.Name, b); err != nil {
		return fmt.Errorf("storing program: %w", err)
	}
	if c.programs[sp.ServiceName] == nil {
		c.programs[sp.ServiceName] = map[string]*program.Program{}
	}
	c.programs[sp.ServiceName][sp.Name] = p
	return c.GW.SetPrograms(sp.ServiceName, c.programList(sp.ServiceName))
}

// DeletePrograms removes one program (name set) or all of a service's;
// it returns how many were removed.
func (c *Control) DeletePrograms(ctx context.Context, service, name string) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.programs[service]
	var names []string
	for n := range m {
		if name == "" || n == name {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if err := c.store.Delete(ctx, keyProgram+service+"/"+n); err != nil {
			return 0, fmt.Errorf("deleting program: %w", err)
		}
		delete(m, n)
	}
	if len(names) > 0 && c.GW.Has(service) {
		if err := c.GW.SetPrograms(service, c.programList(service)); err != nil {
			return 0, err
		}
	}
	return len(names), nil
}

// Names lists the services.
func (c *Control) Names() []string { return c.GW.Names() }

// State is the instances of one service and their state.
func (c *Control) State(name string) (proxy.ServiceState, error) {
	st, ok := c.GW.State(name)
	if !ok {
		return st, ErrUnknownService
	}
	return st, nil
}

// Registry is the shared service registry.
func (c *Control) Registry() sdk.ServiceRegistry { return c.reg }
