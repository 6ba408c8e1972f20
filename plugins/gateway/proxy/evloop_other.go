//go:build !linux

package proxy

import (
	"context"
	"net"
	"time"

	"github.com/sirupsen/logrus"
)

// EventServer is the event-loop engine on Linux; elsewhere it serves
// everything with Fallback, the goroutine engine.
type EventServer struct {
	GW                *Gateway
	Fallback          *Server
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	Logger            logrus.FieldLogger
	Loops             int
}

// Serve serves ln with Fallback.
func (s *EventServer) Serve(ln net.Listener) error { return s.Fallback.Serve(ln) }

// Shutdown shuts Fallback down.
func (s *EventServer) Shutdown(ctx context.Context) error { return s.Fallback.Shutdown(ctx) }
