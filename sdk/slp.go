package sdk

import (
	"context"
	"errors"
	"net/http"
)

// SLP is a service-logic package: hot-swappable logic that handles sessions.
// A session is pinned to the SLP instance that was current when it began,
// so a swap never changes the code under a running session.
//
// An SLP implements one or both of StreamHandler (WebSocket sessions from
// the host's /slp/v1/<name> endpoint) and Filter (per-request middleware run
// by other plugins, e.g. the gateway). It may also implement Starter,
// Stopper and HealthChecker.
type SLP interface{}

// StreamHandler serves one session over a message stream. The host calls it
// once per WebSocket connection to /slp/v1/<name>; the session ends when it
// returns.
type StreamHandler interface {
	ServeStream(ctx context.Context, s Stream) error
}

// Stream is a bidirectional message stream (a WebSocket connection).
type Stream interface {
	// Read blocks for the next text message.
	Read(ctx context.Context) ([]byte, error)
	// Write sends one text message.
	Write(ctx context.Context, msg []byte) error
	// Request is the HTTP request that opened the stream.
	Request() *http.Request
}

// Filter wraps an HTTP handler: it may inspect or change the request, answer
// it itself, or call next.
type Filter interface {
	Filter(w http.ResponseWriter, r *http.Request, next http.Handler)
}

// SLPs lets a plugin run sessions of SLPs loaded in the host.
type SLPs interface {
	// Begin starts a session on the current version of the named SLP. The
	// caller must call End on the returned session exactly once.
	Begin(name string) (Session, error)
}

// Session is one session of an SLP, pinned to one version of it.
type Session interface {
	// SLP is the instance the session is pinned to.
	SLP() SLP
	// Version identifies that instance (the load id), for logs.
	Version() string
	// End finishes the session; the version's "used" count grows by one.
	End()
}

// ErrNoSLP is returned by SLPs.Begin when no SLP of that name is loaded.
var ErrNoSLP = errors.New("sdk: no such SLP loaded")
