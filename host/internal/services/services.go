// Package services is the host's registry of service instances, shared by
// all plugins through sdk.ServiceRegistry. It lives in memory: instances are
// re-registered by whoever runs them (the deploy plugin restores its
// processes at start), and TTL instances expire without heartbeats.
package services

import (
	"context"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/plugd/plugd/sdk"
)

// Registry implements sdk.ServiceRegistry.
type Registry struct {
	mu    sync.Mutex
	insts map[string]map[string]sdk.Instance
	subs  map[chan struct{}]struct{}
	now   func() time.Time
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{insts: map[string]map[string]sdk.Instance{}, subs: map[chan struct{}]struct{}{}, now: time.Now}
}

// Owned returns a view of r that stamps instances with owner.
func (r *Registry) Owned(owner string) sdk.ServiceRegistry { return owned{r, owner} }

type owned struct {
	*Registry
	owner string
}

func (o owned) Register(inst sdk.Instance) error {
	inst.Owner = o.owner
	return o.Registry.Register(inst)
}

// Register adds or replaces an instance.
func (r *Registry) Register(inst sdk.Instance) error {
	if inst.Service == "" || inst.ID == "" {
		return fmt.Errorf("register: service and id are required")
	}
	if _, _, err := net.SplitHostPort(inst.Address); err != nil {
		return fmt.Errorf("register %s/%s: address %q: want host:port", inst.Service, inst.ID, inst.Address)
	}
	if inst.Weight < 0 {
		return fmt.Errorf("register %s/%s: negative weight %d", inst.Service, inst.ID, inst.Weight)
	}
	if inst.Weight == 0 {
		inst.Weight = 1
	}
	inst.Expires = time.Time{}
	if inst.TTL > 0 {
		inst.Expires = r.now().Add(inst.TTL)
	}
	r.mu.Lock()
	if r.insts[inst.Service] == nil {
		r.insts[inst.Service] = map[string]sdk.Instance{}
	}
	r.insts[inst.Service][inst.ID] = inst
	r.mu.Unlock()
	r.notify()
	return nil
}

// Heartbeat renews a TTL instance.
func (r *Registry) Heartbeat(service, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	inst, ok := r.insts[service][id]
	if !ok || r.expired(inst) {
		return fmt.Errorf("%w: %s/%s", sdk.ErrUnknownInstance, service, id)
	}
	if inst.TTL > 0 {
		inst.Expires = r.now().Add(inst.TTL)
		r.insts[service][id] = inst
	}
	return nil
}

// Deregister removes an instance.
func (r *Registry) Deregister(service, id string) error {
	r.mu.Lock()
	_, ok := r.insts[service][id]
	delete(r.insts[service], id)
	r.mu.Unlock()
	if ok {
		r.notify()
	}
	return nil
}

// Instances lists live instances of service by ID.
func (r *Registry) Instances(service string) []sdk.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]sdk.Instance, 0, len(r.insts[service]))
	for _, in := range r.insts[service] {
		if !r.expired(in) {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Services lists services with at least one live instance.
func (r *Registry) Services() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for name, m := range r.insts {
		for _, in := range m {
			if !r.expired(in) {
				out = append(out, name)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Watch signals after every change until ctx ends.
func (r *Registry) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		delete(r.subs, ch)
		r.mu.Unlock()
	}()
	return ch
}

// RemoveOwner drops every instance registered through Owned(owner); the
// host calls it after a plugin's final unload, so that nothing it announced
// outlives it. It returns how many were removed.
func (r *Registry) RemoveOwner(owner string) int {
	r.mu.Lock()
	n := 0
	for _, m := range r.insts {
		for id, in := range m {
			if in.Owner == owner {
				delete(m, id)
				n++
			}
		}
	}
	r.mu.Unlock()
	if n > 0 {
		r.notify()
	}
	return n
}

// Expire drops instances whose TTL passed and signals watchers; the host
// calls it periodically.
func (r *Registry) Expire() {
	r.mu.Lock()
	n := 0
	for _, m := range r.insts {
		for id, in := range m {
			if r.expired(in) {
				delete(m, id)
				n++
			}
		}
	}
	r.mu.Unlock()
	if n > 0 {
		r.notify()
	}
}

func (r *Registry) expired(in sdk.Instance) bool {
	return !in.Expires.IsZero() && !r.now().Before(in.Expires)
}

func (r *Registry) notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
