package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/plugd/plugd/plugins/gateway/balance"
	"github.com/plugd/plugd/plugins/gateway/breaker"
	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/sdk"
	"golang.org/x/time/rate"
)

// Upstream is one instance of a service. Its live state (breaker,
// in-flight count, health) is shared by every version of the instance, so
// it survives config and instance-list changes.
type Upstream struct {
	Inst sdk.Instance
	*live
}

type live struct {
	inflight atomic.Int64
	healthy  atomic.Bool
	br       atomic.Pointer[breaker.Breaker]
	// quiet is bit 0 set while the breaker is known closed with no streak
	// of failures, above a sequence number of failures and breaker
	// changes. While quiet, a request need not ask the breaker nor report
	// its success (neither would change anything a decision depends on):
	// that saves the breaker's lock and clock reads per request. A
	// failure ends it and is reported as usual.
	quiet atomic.Uint64
	pool  atomic.Pointer[h1Pool]
	// health check streaks, touched only by the checker goroutine
	okStreak, failStreak int
}

func newUpstream(inst sdk.Instance, l *live) *Upstream {
	if inst.Weight <= 0 {
		inst.Weight = 1
	}
	if l == nil {
		l = &live{}
		l.healthy.Store(true)
	}
	return &Upstream{Inst: inst, live: l}
}

// ID, Weight, Load and Available make an Upstream a balance.Target.
func (u *Upstream) ID() string  { return u.Inst.ID }
func (u *Upstream) Weight() int { return u.Inst.Weight }
func (u *Upstream) Load() int64 { return u.inflight.Load() }
func (u *Upstream) Available() bool {
	if !u.healthy.Load() {
		return false
	}
	if u.quiet.Load()&1 != 0 {
		return true
	}
	b := u.br.Load()
	return b == nil || b.State() != breaker.Open
}

// Healthy reports the health-check verdict (true without checks).
func (u *Upstream) Healthy() bool { return u.healthy.Load() }

// BreakerState is "closed", "half-open" or "open".
func (u *Upstream) BreakerState() string {
	if b := u.br.Load(); b != nil {
		return b.State().String()
	}
	return "closed"
}

// snapshot is the immutable routing state of a service; a change builds a
// new one and swaps it in, so a request sees one consistent version.
type snapshot struct {
	cfg       conf.Service
	isDefault bool
	ups       []*Upstream
	bal       balance.Balancer
	transport *http.Transport
	scheme    string
	retries   int
	trim      bool
	respTO    time.Duration // response_header_timeout; 0: none
	hashHdr   string
	slp       string
	progs     []*program.Program
	keeps     bool // a program may keep request values (set_global)
}

// Service is the runtime state of one routing key.
type Service struct {
	Name    string
	snap    atomic.Pointer[snapshot]
	limiter atomic.Pointer[rate.Limiter]
	hc      atomic.Pointer[conf.HealthCheck]
	m       *svcMetrics
}

func (s *Service) load() *snapshot { return s.snap.Load() }

func newTransport(rp conf.ReverseProxy, idle int) *http.Transport {
	dial, _ := conf.Duration("dial_timeout", rp.DialTimeout, 5*time.Second)
	tlsTO, _ := conf.Duration("tls_handshake_timeout", rp.TLSHandshakeTimeout, 10*time.Second)
	if dial <= 0 {
		dial = 5 * time.Second
	}
	d := &net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:               nil,
		DialContext:         d.DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: idle,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: tlsTO,
		// what response_header_timeout means in the other engines
		ResponseHeaderTimeout: rp.ResponseHeaderTimeoutOrDefault(),
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		WriteBufferSize:       32 << 10,
		ReadBufferSize:        32 << 10,
		// ExpectContinueTimeout stays 0: bodies are sent at once.
	}
}

// State is one instance's line in upstream/service/state.
type State struct {
	Hostname     string `json:"hostname"`
	InstanceID   string `json:"instance_id"`
	Address      string `json:"address"`
	Healthy      bool   `json:"healthy"`
	Weight       int    `json:"weight"`
	Load         int64  `json:"load"`
	BreakerState string `json:"breaker_state"`
}

// ServiceState is the data of upstream/service/state.
type ServiceState struct {
	Upstreams      int     `json:"upstreams"`
	UpstreamStates []State `json:"upstream_states"`
}

func (s *Service) state() ServiceState {
	sn := s.load()
	out := ServiceState{UpstreamStates: []State{}}
	if sn == nil {
		return out
	}
	for _, u := range sn.ups {
		out.UpstreamStates = append(out.UpstreamStates, State{Hostname: u.Inst.Hostname,
			InstanceID: u.Inst.ID, Address: u.Inst.Address, Healthy: u.Healthy(), Weight: u.Inst.Weight,
			Load: u.Load(), BreakerState: u.BreakerState()})
	}
	out.Upstreams = len(sn.ups)
	return out
}

// admit asks the instance's breaker to let a request through; the request
// must end with report(done, outcome). done is nil when admitted quietly.
func (u *Upstream) admit() (done func(error), err error) {
	if u.quiet.Load()&1 != 0 {
		return nil, nil
	}
	return u.br.Load().Allow()
}

// report ends a request admitted by admit: nil is a success, a failure an
// error, breaker.ErrExcluded neither.
func (u *Upstream) report(done func(error), outcome error) {
	excluded := errors.Is(outcome, breaker.ErrExcluded)
	if done == nil {
		if outcome == nil || excluded {
			return
		}
		u.unquiet()
		d, err := u.br.Load().Allow()
		if err != nil {
			return // opened meanwhile: the failure is moot
		}
		d(outcome)
		return
	}
	if outcome != nil {
		u.unquiet()
		done(outcome)
		return
	}
	q := u.quiet.Load()
	done(nil)
	b := u.br.Load()
	if !excluded && b.State() == breaker.Closed && b.Counts().ConsecutiveFailures == 0 {
		// quiet unless a failure or a new breaker came in between
		u.quiet.CompareAndSwap(q&^1, q|1)
	}
}

// unquiet ends the quiet state (a failure, a new breaker).
func (u *Upstream) unquiet() {
	for {
		q := u.quiet.Load()
		if u.quiet.CompareAndSwap(q, (q|1)+1) { // next sequence, bit 0 clear
			return
		}
	}
}
