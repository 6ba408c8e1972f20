// Package proxy is the gateway's data plane: routing by the first path
// segment, rate limiting, programs, SLP filters, load balancing over
// breaker-guarded instances and a reverse proxy with retries. All routing
// state is held in immutable snapshots behind atomic pointers, so the
// control plane can change anything while traffic flows and a request
// always sees one consistent version.
package proxy

import (
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugd/plugd/plugins/gateway/balance"
	"github.com/plugd/plugd/plugins/gateway/breaker"
	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/limit"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// Options configure a Gateway.
type Options struct {
	Prefix              string
	MaxIdleConnsPerHost int
	SLPs                sdk.SLPs
	Logger              logrus.FieldLogger
	// SetGlobal is called when a program runs set_global.
	SetGlobal func(key string, value any)
}

// Gateway routes requests to services. Its methods other than ServeHTTP
// are the control plane's; they may be called at any time.
type Gateway struct {
	opt      Options
	mu       sync.Mutex // serializes writers
	services atomic.Pointer[map[string]*Service]
	globals  atomic.Pointer[map[string]any]
	envs     sync.Pool
	metrics  *metrics
}

// New returns a Gateway with no services.
func New(opt Options) *Gateway {
	if opt.Prefix == "" {
		opt.Prefix = "/"
	}
	if opt.MaxIdleConnsPerHost <= 0 {
		opt.MaxIdleConnsPerHost = 512
	}
	if opt.Logger == nil {
		opt.Logger = logrus.New()
	}
	g := &Gateway{opt: opt}
	m := map[string]*Service{}
	g.services.Store(&m)
	gl := map[string]any{}
	g.globals.Store(&gl)
	g.envs.New = func() any { return program.NewEnv(g.setGlobal) }
	g.metrics = newMetrics(g)
	return g
}

func (g *Gateway) setGlobal(k string, v any) {
	g.mu.Lock()
	old := *g.globals.Load()
	m := make(map[string]any, len(old)+1)
	for kk, vv := range old {
		m[kk] = vv
	}
	m[k] = v
	g.globals.Store(&m)
	g.mu.Unlock()
	if g.opt.SetGlobal != nil {
		g.opt.SetGlobal(k, v)
	}
}

// SetGlobals replaces the global variables programs see.
func (g *Gateway) SetGlobals(vars map[string]any) {
	m := make(map[string]any, len(vars))
	for k, v := range vars {
		m[k] = v
	}
	g.mu.Lock()
	g.globals.Store(&m)
	g.mu.Unlock()
}

// Globals returns a copy of the global variables.
func (g *Gateway) Globals() map[string]any {
	old := *g.globals.Load()
	m := make(map[string]any, len(old))
	for k, v := range old {
		m[k] = v
	}
	return m
}

func (g *Gateway) lookup(name string) *Service { return (*g.services.Load())[name] }

// service returns the named service, creating it; g.mu must be held.
func (g *Gateway) service(name string) *Service {
	if s := g.lookup(name); s != nil {
		return s
	}
	s := &Service{Name: name, m: g.metrics.forService(name)}
	cfg := conf.Default()
	s.snap.Store(&snapshot{cfg: cfg, isDefault: true, transport: newTransport(cfg.ReverseProxy, g.opt.MaxIdleConnsPerHost)})
	old := *g.services.Load()
	m := make(map[string]*Service, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[name] = s
	g.services.Store(&m)
	return s
}

// Names lists the services, sorted.
func (g *Gateway) Names() []string {
	m := *g.services.Load()
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Has reports whether a service of that name exists.
func (g *Gateway) Has(name string) bool { return g.lookup(name) != nil }

// State returns the instances of a service and their state.
func (g *Gateway) State(name string) (ServiceState, bool) {
	s := g.lookup(name)
	if s == nil {
		return ServiceState{}, false
	}
	return s.state(), true
}

// Config returns the config a service runs with and whether it is the
// default one.
func (g *Gateway) Config(name string) (conf.Service, bool, bool) {
	s := g.lookup(name)
	if s == nil {
		return conf.Service{}, false, false
	}
	sn := s.load()
	return sn.cfg, sn.isDefault, true
}

// Remove drops a service.
func (g *Gateway) Remove(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	old := *g.services.Load()
	s, ok := old[name]
	if !ok {
		return
	}
	m := make(map[string]*Service, len(old))
	for k, v := range old {
		if k != name {
			m[k] = v
		}
	}
	g.services.Store(&m)
	if sn := s.load(); sn != nil {
		sn.transport.CloseIdleConnections()
		for _, u := range sn.ups {
			u.pool.Load().close()
		}
	}
}

// SetConfig applies a service's config to live traffic: a limiter change
// replaces the service's token bucket, a breaker change rebuilds every
// instance's breaker with the new settings, carrying its state over (an
// open or half-open breaker stays open for the new open_timeout, a closed
// one keeps its streak of failures: see breaker.Carry), a reverse-proxy
// change a new connection pool, a strategy change a new balancer.
func (g *Gateway) SetConfig(name string, cfg conf.Service, isDefault bool) error {
	if err := cfg.Normalize(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.service(name)
	old := s.load()
	sn := *old
	sn.cfg, sn.isDefault = cfg, isDefault
	if cfg.ReverseProxy != old.cfg.ReverseProxy {
		sn.transport = newTransport(cfg.ReverseProxy, g.opt.MaxIdleConnsPerHost)
		defer old.transport.CloseIdleConnections()
		for _, u := range sn.ups {
			g.setPool(u, cfg.ReverseProxy)
		}
	}
	if cfg.RateLimiter != old.cfg.RateLimiter || s.limiter.Load() == nil && cfg.RateLimiter.Rate > 0 {
		s.limiter.Store(limit.New(cfg.RateLimiter))
	}
	if cfg.Breaker != old.cfg.Breaker {
		for _, u := range sn.ups {
			if err := g.setBreaker(name, u, cfg.Breaker); err != nil {
				return err
			}
		}
	}
	if err := g.publish(s, &sn); err != nil {
		return err
	}
	return nil
}

// setPool gives u a new connection pool built for rp, closing the old one.
func (g *Gateway) setPool(u *Upstream, rp conf.ReverseProxy) {
	dial, _ := conf.Duration("dial_timeout", rp.DialTimeout, 5*time.Second)
	if dial <= 0 {
		dial = 5 * time.Second
	}
	if old := u.pool.Swap(newH1Pool(u.Inst.Address, dial, g.opt.MaxIdleConnsPerHost)); old != nil {
		old.close()
	}
}

func (g *Gateway) setBreaker(service string, u *Upstream, c conf.Breaker) error {
	b, err := breaker.New(service+"/"+u.Inst.ID, c, nil)
	if err != nil {
		return err
	}
	breaker.Carry(u.br.Load(), b, c)
	u.br.Store(b)
	u.unquiet()
	return nil
}

// publish derives the rest of sn from its config and upstreams and swaps it in.
func (g *Gateway) publish(s *Service, sn *snapshot) error {
	targets := make([]balance.Target, len(sn.ups))
	for i, u := range sn.ups {
		targets[i] = u
	}
	b, err := balance.New(sn.cfg.LoadBalance.Strategy, targets)
	if err != nil {
		return err
	}
	sn.bal = b
	sn.scheme = sn.cfg.ReverseProxy.Scheme
	if sn.scheme == "" {
		sn.scheme = "http"
	}
	sn.retries = sn.cfg.ReverseProxy.RetryCount
	sn.trim = sn.cfg.ReverseProxy.TrimRoutingKeyPrefix
	sn.respTO = sn.cfg.ReverseProxy.ResponseHeaderTimeoutOrDefault()
	sn.hashHdr = sn.cfg.LoadBalance.HashHeader
	sn.slp = sn.cfg.SLP
	sn.keeps = false
	for _, p := range sn.progs {
		sn.keeps = sn.keeps || p.KeepsValues()
	}
	s.snap.Store(sn)
	return nil
}

// SetInstances replaces a service's instances. Instances whose ID and
// address are unchanged keep their breaker and in-flight count.
func (g *Gateway) SetInstances(name string, insts []sdk.Instance) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.service(name)
	old := s.load()
	byID := make(map[string]*Upstream, len(old.ups))
	for _, u := range old.ups {
		byID[u.Inst.ID] = u
	}
	sorted := append([]sdk.Instance(nil), insts...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	sn := *old
	sn.ups = make([]*Upstream, 0, len(sorted))
	for _, in := range sorted {
		if in.ID == "" || in.Address == "" {
			return fmt.Errorf("service %s: instance needs an id and an address", name)
		}
		var u *Upstream
		if prev := byID[in.ID]; prev != nil && prev.Inst.Address == in.Address {
			u = newUpstream(in, prev.live)
		} else {
			u = newUpstream(in, nil)
			if err := g.setBreaker(name, u, sn.cfg.Breaker); err != nil {
				return err
			}
			g.setPool(u, sn.cfg.ReverseProxy)
		}
		sn.ups = append(sn.ups, u)
	}
	return g.publish(s, &sn)
}

// SetPrograms replaces a service's programs.
func (g *Gateway) SetPrograms(name string, progs []*program.Program) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.service(name)
	sn := *s.load()
	sn.progs = append([]*program.Program(nil), progs...)
	return g.publish(s, &sn)
}

// SetHealthCheck turns active health checks of a service on (nil: off,
// every instance healthy).
func (g *Gateway) SetHealthCheck(name string, hc *conf.HealthCheck) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.service(name)
	s.hc.Store(hc)
	if hc == nil {
		for _, u := range s.load().ups {
			u.healthy.Store(true)
		}
	}
}

// Close releases the connection pools.
func (g *Gateway) Close() {
	for _, s := range *g.services.Load() {
		if sn := s.load(); sn != nil {
			sn.transport.CloseIdleConnections()
			for _, u := range sn.ups {
				u.pool.Load().close()
			}
		}
	}
}

// Metrics is the Prometheus handler of this gateway's metrics.
func (g *Gateway) Metrics() http.Handler { return g.metrics.handler() }
