// Package breaker builds the per-instance circuit breakers (sony/gobreaker)
// from the seed's breaker config.
package breaker

import (
	"errors"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/sony/gobreaker/v2"
)

// Breaker is one instance's breaker. Allow returns a done callback to
// report the outcome (nil error = success) or an error when the breaker is
// open or its half-open quota is used up.
type Breaker = gobreaker.TwoStepCircuitBreaker[struct{}]

// State re-exports gobreaker's state.
type State = gobreaker.State

// States.
const (
	Closed   = gobreaker.StateClosed
	HalfOpen = gobreaker.StateHalfOpen
	Open     = gobreaker.StateOpen
)

// ErrExcluded reported to a done callback counts as neither success nor
// failure (the client went away before the upstream answered).
var ErrExcluded = errors.New("breaker: outcome not counted")

// New builds a breaker named name from c. The breaker opens after
// c.MaxFailures consecutive failures (0 turns tripping off), lets
// c.HalfOpenMaxRequests through when half-open after c.OpenTimeout, and
// clears its counts every c.Interval while closed. onChange, if not nil, is
// called on every state change.
func New(name string, c conf.Breaker, onChange func(from, to State)) (*Breaker, error) {
	open, err := conf.Duration("breaker.open_timeout", c.OpenTimeout, 30*time.Second)
	if err != nil {
		return nil, err
	}
	interval, err := conf.Duration("breaker.interval", c.Interval, 0)
	if err != nil {
		return nil, err
	}
	if open <= 0 {
		open = 30 * time.Second
	}
	max := c.MaxFailures
	half := c.HalfOpenMaxRequests
	if half == 0 {
		half = 1
	}
	if c.Name != "" {
		name = c.Name + "/" + name
	}
	st := gobreaker.Settings{
		Name:        name,
		MaxRequests: half,
		Interval:    interval,
		Timeout:     open,
		ReadyToTrip: func(cn gobreaker.Counts) bool {
			return max > 0 && cn.ConsecutiveFailures >= max
		},
		IsExcluded: func(err error) bool { return errors.Is(err, ErrExcluded) },
	}
	if onChange != nil {
		st.OnStateChange = func(_ string, from, to gobreaker.State) { onChange(from, to) }
	}
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](st), nil
}

// errCarried is the failure Carry reports to a new breaker.
var errCarried = errors.New("breaker: state carried over from the previous settings")

// Carry passes old's state on to nb, a breaker built with new settings c
// for the same instance, so that a settings change does not silently
// close a breaker:
//   - old open or half-open (the instance has not proved healthy again):
//     nb starts open, for c's open_timeout counted from now, then
//     half-opens as usual;
//   - old closed: nb gets old's streak of consecutive failures, so it
//     opens once the streak reaches c.MaxFailures (at once if it already
//     has).
//
// gobreaker has no way to set a state, so nb is driven there by reported
// failures; with c.MaxFailures 0 (tripping off) nb stays closed.
func Carry(old, nb *Breaker, c conf.Breaker) {
	if old == nil || c.MaxFailures == 0 {
		return
	}
	var n uint32
	switch old.State() {
	case Open, HalfOpen:
		n = c.MaxFailures
	default:
		n = min(old.Counts().ConsecutiveFailures, c.MaxFailures)
	}
	for i := uint32(0); i < n && nb.State() == Closed; i++ {
		done, err := nb.Allow()
		if err != nil {
			return
		}
		done(errCarried)
	}
}
