package sdk

import (
	"context"
	"net"

	"github.com/sirupsen/logrus"
)

// Host is what the host hands a plugin instance. It is valid from NewAPI or
// NewSLP until the instance's Stop returns.
type Host interface {
	// Name is the name the instance is loaded under ("chatroom.v1" for an
	// API, "chatroom" for an SLP).
	Name() string
	// Logger logs with the plugin's name as a field.
	Logger() logrus.FieldLogger
	// Config decodes the plugin's section of the host config (the key
	// plugins.<Declaration.Name>) into v, strictly: unknown keys are errors.
	// With no section, v is left as it is, so set defaults before calling.
	Config(v any) error
	// DataDir is a directory for the plugin's files, kept across swaps and
	// restarts (<data dir>/plugins/<Declaration.Name>).
	DataDir() string
	// Store is the plugin's namespaced persistent key-value store.
	Store() Store
	// Listen returns a listener on addr owned by the host. The socket stays
	// open across swaps of the plugin: close the returned listener in Stop,
	// and the next version's Listen on the same address gets the same
	// socket, so no connection is refused in between.
	Listen(network, addr string) (net.Listener, error)
	// Go runs fn in a goroutine the host supervises: a panic is recovered
	// and logged (not fatal to the host), and ctx is canceled when the
	// instance stops. Plain `go` statements in plugins are not protected.
	Go(name string, fn func(ctx context.Context))
	// SLPs begins sessions of loaded SLPs.
	SLPs() SLPs
	// Services is the registry of service instances shared by all plugins.
	Services() ServiceRegistry
	// Draining is closed when this instance has been replaced or unloaded
	// (or the host is stopping) and is finishing its in-flight work.
	// Long-lived responses and sessions (log follows, long polls, streams)
	// should wrap up when it closes, so that the swap or unload completes
	// at once; at the drain deadline the host cancels their contexts anyway.
	Draining() <-chan struct{}
}
