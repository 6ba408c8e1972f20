package sdk

import "context"

// StopReason tells Stop why the instance is going away, so that a plugin
// which supervises something outside the process (processes, sockets, leases)
// knows whether to hand it over or to end it.
type StopReason uint8

const (
	// StopUnloaded: the plugin was unloaded and nothing replaces it. Release
	// everything, including what outlives the process. This is the zero value,
	// so a Stop called without a reason (a unit test, say) cleans up fully.
	StopUnloaded StopReason = iota
	// StopReplaced: a newer instance of the same name already serves. Leave
	// shared resources for it to adopt.
	StopReplaced
	// StopShutdown: the host is exiting and will load the plugin again when it
	// starts, from its saved state. Keep what should survive the restart.
	StopShutdown
)

func (r StopReason) String() string {
	switch r {
	case StopUnloaded:
		return "unloaded"
	case StopReplaced:
		return "replaced"
	case StopShutdown:
		return "shutdown"
	}
	return "unknown"
}

type stopReasonKey struct{}

// WithStopReason returns a context carrying r. The host sets it on the
// context it passes to Stop; tests of a plugin use it to call Stop as the
// host would.
func WithStopReason(ctx context.Context, r StopReason) context.Context {
	return context.WithValue(ctx, stopReasonKey{}, r)
}

// StopReasonFrom returns the reason carried by the context passed to Stop,
// or StopUnloaded when there is none.
func StopReasonFrom(ctx context.Context) StopReason {
	r, _ := ctx.Value(stopReasonKey{}).(StopReason)
	return r
}
