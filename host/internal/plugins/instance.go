// Package plugins keeps the loaded APIs and SLPs: it creates instances from
// declarations, swaps them atomically, drains and stops the old ones, and
// persists the loaded set.
package plugins

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// State of one loaded instance.
type State string

const (
	Active   State = "active"
	Draining State = "draining"
	Stopped  State = "stopped"
	Failed   State = "failed"
)

// instance is one load of an API or SLP: the value the plugin built, the
// Host handle it was given, and a count of the requests or sessions running
// on it, so that a replaced instance can be drained before it is stopped.
type instance struct {
	kind   Kind
	id     string // e.g. chatroom.v1#3
	name   string // chatroom.v1 or chatroom
	file   string
	loaded time.Time
	value  any // sdk.API or sdk.SLP
	host   *pluginHost

	mu     sync.Mutex
	active int
	closed bool
	idle   chan struct{} // closed when closed && active == 0
	state  State
	// deadline is canceled when the drain deadline passes: requests and
	// sessions still running on the instance are told to end before its
	// Stop runs.
	deadline context.Context
	expire   context.CancelFunc

	used atomic.Int64 // SLP sessions finished
}

func newInstance(kind Kind, id, name, file string, h *pluginHost) *instance {
	in := &instance{kind: kind, id: id, name: name, file: file, loaded: time.Now(), host: h, idle: make(chan struct{}), state: Active}
	in.deadline, in.expire = context.WithCancel(context.Background())
	return in
}

// acquire counts one more request or session; false once the instance is
// closed, in which case the caller looks up the current instance again.
func (in *instance) acquire() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return false
	}
	in.active++
	return true
}

func (in *instance) release() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.active--
	if in.closed && in.active == 0 {
		close(in.idle)
	}
}

func (in *instance) using() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.active
}

func (in *instance) getState() State {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state
}

func (in *instance) setState(s State) {
	in.mu.Lock()
	in.state = s
	in.mu.Unlock()
}

// close refuses new work and marks the instance draining.
func (in *instance) close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closed {
		return
	}
	in.closed = true
	in.state = Draining
	close(in.host.draining)
	if in.active == 0 {
		close(in.idle)
	}
}

// drainAndStop waits for in-flight work (at most drain), then runs the
// plugin's Stop with a deadline of stop and the reason in its context, then
// cancels its goroutines.
func (in *instance) drainAndStop(why sdk.StopReason, drain, stop time.Duration, log logrus.FieldLogger) {
	in.close()
	t := time.NewTimer(drain)
	select {
	case <-in.idle:
		t.Stop()
	case <-t.C:
		log.WithField("load", in.id).Warnf("drain deadline %s passed with %d still running; ending them and stopping", drain, in.using())
		in.expire()
		// Give sessions told to end a moment to close cleanly before Stop.
		select {
		case <-in.idle:
		case <-time.After(min(stop, 2*time.Second)):
		}
	}
	ctx, cancel := context.WithTimeout(sdk.WithStopReason(context.Background(), why), stop)
	defer cancel()
	log.WithFields(logrus.Fields{"load": in.id, "reason": why}).Debug("stopping")
	if s, ok := in.value.(sdk.Stopper); ok {
		if err := boundedCall(ctx, "Stop", func() error { return s.Stop(ctx) }); err != nil {
			log.WithField("load", in.id).WithError(err).Error("stop failed")
		}
	}
	in.host.shutdown(stop, log)
	in.expire()
	in.setState(Stopped)
}

// boundedCall runs a plugin hook under safeCall and waits for it at most
// until ctx ends. A hook that ignores its context and never returns must not
// wedge the host (a Load holds the manager's lock, shutdown waits for Stop):
// past the deadline the caller goes on and the hook's goroutine is left
// behind, since Go cannot stop it.
func boundedCall(ctx context.Context, what string, fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- safeCall(fn) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s did not return within its deadline (it was left running)", what)
	}
}

// safeCall runs a plugin hook, turning a panic into an error.
func safeCall(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return fn()
}

// pluginHost is the sdk.Host of one instance.
type pluginHost struct {
	m        *Manager
	name     string // loaded name
	decl     *sdk.Declaration
	log      logrus.FieldLogger
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	handles  []net.Listener
	services sdk.ServiceRegistry
	draining chan struct{} // closed when the instance is closed
}

func (h *pluginHost) Name() string               { return h.name }
func (h *pluginHost) Logger() logrus.FieldLogger { return h.log }
func (h *pluginHost) Config(v any) error         { return h.m.cfg.DecodePlugin(h.decl.Name, v) }
func (h *pluginHost) DataDir() string            { return h.m.pluginDataDir(h.decl.Name) }
func (h *pluginHost) Store() sdk.Store           { return h.m.db.Namespace(h.decl.Name) }
func (h *pluginHost) SLPs() sdk.SLPs             { return h.m }
func (h *pluginHost) Draining() <-chan struct{}  { return h.draining }
func (h *pluginHost) Services() sdk.ServiceRegistry {
	return h.services
}

func (h *pluginHost) Listen(network, addr string) (net.Listener, error) {
	ln, err := h.m.listeners.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.handles = append(h.handles, ln)
	h.mu.Unlock()
	return ln, nil
}

func (h *pluginHost) Go(name string, fn func(ctx context.Context)) {
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		defer func() {
			if p := recover(); p != nil {
				h.log.WithField("goroutine", name).Errorf("goroutine panicked (recovered by the host): %v\n%s", p, debug.Stack())
			}
		}()
		fn(h.ctx)
	}()
}

// shutdown cancels the instance's goroutines, waits for them a while, and
// closes listener handles the plugin left open.
func (h *pluginHost) shutdown(wait time.Duration, log logrus.FieldLogger) {
	h.cancel()
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(wait):
		log.WithField("plugin", h.name).Warn("goroutines still running after stop; they stay in the process (Go cannot unload code)")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ln := range h.handles {
		ln.Close()
	}
	h.handles = nil
}
