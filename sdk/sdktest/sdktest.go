// Package sdktest provides an in-memory sdk.Host for unit tests of plugin
// logic, in the spirit of net/http/httptest. End-to-end tests must use the
// real plugd binary instead; this is for testing a plugin's own packages.
package sdktest

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
	"gopkg.in/yaml.v3"
)

// Host is an sdk.Host backed by memory and t.TempDir().
type Host struct {
	T        testing.TB
	HostName string
	// ConfigYAML is the plugin's config section, as YAML.
	ConfigYAML string

	dir      string
	store    *Store
	services *Registry
	slps     map[string]sdk.SLP
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	draining chan struct{}
	drainOne sync.Once
}

// NewHost returns a Host whose goroutines are canceled and awaited at the
// end of the test.
func NewHost(t testing.TB, name string) *Host {
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{T: t, HostName: name, dir: t.TempDir(), store: NewStore(),
		services: NewRegistry(), slps: map[string]sdk.SLP{}, ctx: ctx, cancel: cancel,
		draining: make(chan struct{})}
	t.Cleanup(func() { cancel(); h.wg.Wait() })
	return h
}

func (h *Host) Name() string { return h.HostName }

// Draining is closed by StartDraining.
func (h *Host) Draining() <-chan struct{} { return h.draining }

// StartDraining closes Draining, as the host does when the instance is
// replaced or unloaded.
func (h *Host) StartDraining() { h.drainOne.Do(func() { close(h.draining) }) }

func (h *Host) Logger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(testWriter{h.T})
	return l.WithField("plugin", h.HostName)
}

func (h *Host) Config(v any) error {
	if strings.TrimSpace(h.ConfigYAML) == "" {
		return nil
	}
	dec := yaml.NewDecoder(strings.NewReader(h.ConfigYAML))
	dec.KnownFields(true)
	return dec.Decode(v)
}

func (h *Host) DataDir() string               { return h.dir }
func (h *Host) Store() sdk.Store              { return h.store }
func (h *Host) Services() sdk.ServiceRegistry { return h.services }
func (h *Host) SLPs() sdk.SLPs                { return slps{h} }

// AddSLP makes slp available to Begin under name.
func (h *Host) AddSLP(name string, slp sdk.SLP) { h.slps[name] = slp }

func (h *Host) Listen(network, addr string) (net.Listener, error) { return net.Listen(network, addr) }

func (h *Host) Go(name string, fn func(ctx context.Context)) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				h.T.Errorf("goroutine %s panicked: %v\n%s", name, p, debug.Stack())
			}
		}()
		fn(h.ctx)
	}()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type slps struct{ h *Host }

func (s slps) Begin(name string) (sdk.Session, error) {
	slp, ok := s.h.slps[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", sdk.ErrNoSLP, name)
	}
	return session{slp}, nil
}

type session struct{ slp sdk.SLP }

func (s session) SLP() sdk.SLP    { return s.slp }
func (s session) Version() string { return "test" }
func (s session) End()            {}

// Store is an in-memory sdk.Store.
type Store struct {
	mu   sync.Mutex
	data map[string]entry
}

type entry struct {
	val     []byte
	expires time.Time
}

func NewStore() *Store { return &Store{data: map[string]entry{}} }

func (s *Store) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return memTx{s}.Get(key)
}

func (s *Store) Put(_ context.Context, key string, v []byte, opts ...sdk.PutOption) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return memTx{s}.Put(key, v, opts...)
}

func (s *Store) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return memTx{s}.Delete(key)
}

func (s *Store) List(_ context.Context, prefix string) ([]sdk.KV, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return memTx{s}.List(prefix)
}

func (s *Store) Update(_ context.Context, fn func(sdk.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	saved := make(map[string]entry, len(s.data))
	for k, v := range s.data {
		saved[k] = v
	}
	if err := fn(memTx{s}); err != nil {
		s.data = saved
		return err
	}
	return nil
}

// Watch is not supported by the in-memory store: it returns a channel that
// closes when ctx ends.
func (s *Store) Watch(ctx context.Context, _ string) (<-chan sdk.Event, error) {
	ch := make(chan sdk.Event)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}

type memTx struct{ s *Store }

func (t memTx) Get(key string) ([]byte, error) {
	e, ok := t.s.data[key]
	if !ok || (!e.expires.IsZero() && time.Now().After(e.expires)) {
		return nil, sdk.ErrNotFound
	}
	return append([]byte(nil), e.val...), nil
}

func (t memTx) Put(key string, v []byte, opts ...sdk.PutOption) error {
	o := sdk.ApplyPutOptions(opts)
	e := entry{val: append([]byte(nil), v...)}
	if o.TTL > 0 {
		e.expires = time.Now().Add(o.TTL)
	}
	t.s.data[key] = e
	return nil
}

func (t memTx) Delete(key string) error { delete(t.s.data, key); return nil }

func (t memTx) List(prefix string) ([]sdk.KV, error) {
	var out []sdk.KV
	for k := range t.s.data {
		if strings.HasPrefix(k, prefix) {
			if v, err := t.Get(k); err == nil {
				out = append(out, sdk.KV{Key: k, Value: v})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// Registry is an in-memory sdk.ServiceRegistry without TTL expiry.
type Registry struct {
	mu    sync.Mutex
	insts map[string]map[string]sdk.Instance
	subs  []chan struct{}
}

func NewRegistry() *Registry { return &Registry{insts: map[string]map[string]sdk.Instance{}} }

func (r *Registry) Register(inst sdk.Instance) error {
	if inst.Service == "" || inst.ID == "" || inst.Address == "" {
		return fmt.Errorf("instance needs service, id and address")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.insts[inst.Service] == nil {
		r.insts[inst.Service] = map[string]sdk.Instance{}
	}
	r.insts[inst.Service][inst.ID] = inst
	r.notify()
	return nil
}

func (r *Registry) Heartbeat(service, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.insts[service][id]; !ok {
		return sdk.ErrUnknownInstance
	}
	return nil
}

func (r *Registry) Deregister(service, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.insts[service], id)
	r.notify()
	return nil
}

func (r *Registry) Instances(service string) []sdk.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []sdk.Instance
	for _, in := range r.insts[service] {
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (r *Registry) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for s, m := range r.insts {
		if len(m) > 0 {
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return out
}

func (r *Registry) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.subs = append(r.subs, ch)
	r.mu.Unlock()
	return ch
}

func (r *Registry) notify() {
	for _, ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

var _ sdk.Host = (*Host)(nil)
