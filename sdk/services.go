package sdk

import (
	"context"
	"errors"
	"time"
)

// Instance is one running instance of a named service.
type Instance struct {
	ID       string            `json:"id"`
	Service  string            `json:"service"`
	Hostname string            `json:"hostname,omitempty"`
	Address  string            `json:"address"` // host:port
	Weight   int               `json:"weight"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// TTL, when set, makes the instance expire unless Heartbeat renews it.
	TTL time.Duration `json:"ttl,omitempty"`
	// Expires is set by the registry from TTL; zero means never.
	Expires time.Time `json:"expires,omitempty"`
	// Owner is the plugin that registered the instance (set by the host).
	Owner string `json:"owner,omitempty"`
}

// ServiceRegistry is the registry of service instances shared by every
// plugin in the host: the deploy plugin registers the processes it runs, the
// gateway routes to them.
type ServiceRegistry interface {
	// Register adds or replaces instance inst.ID of inst.Service.
	Register(inst Instance) error
	// Heartbeat renews a TTL instance; ErrUnknownInstance if it is gone.
	Heartbeat(service, id string) error
	// Deregister removes an instance; removing a missing one is not an error.
	Deregister(service, id string) error
	// Instances lists the live instances of service, ordered by ID.
	Instances(service string) []Instance
	// Services lists the names of services with live instances, sorted.
	Services() []string
	// Watch is signaled (without blocking) after every change, until ctx
	// ends. Re-read Instances when it fires.
	Watch(ctx context.Context) <-chan struct{}
}

// ErrUnknownInstance is returned by Heartbeat for an instance not registered.
var ErrUnknownInstance = errors.New("sdk: unknown service instance")
