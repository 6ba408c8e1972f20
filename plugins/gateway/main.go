// Command gateway is the plugd API gateway plugin (gateway.v1): a reverse
// proxy on its own host-owned listener, routed by the first path segment
// (the service name), with the seed's management API on the host's
// management listener under /gateway/v1/.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/control"
	"github.com/plugd/plugd/plugins/gateway/manage"
	"github.com/plugd/plugd/plugins/gateway/proxy"
	"github.com/plugd/plugd/sdk"
)

// Plugin is the declaration the host looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "gateway",
	Version: "v1",
	NewAPI:  newAPI,
}

func main() {}

type gateway struct {
	h   sdk.Host
	cfg conf.Plugin
	ctl *control.Control
	api *manage.API
	srv interface {
		Serve(net.Listener) error
		Shutdown(context.Context) error
	}
	ln      net.Listener
	serving atomic.Bool
}

func newAPI(h sdk.Host) (sdk.API, error) {
	cfg := conf.DefaultPlugin()
	if err := h.Config(&cfg); err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	if err := cfg.Normalize(); err != nil {
		return nil, err
	}
	ctl := control.New(cfg, h.Store(), h.Services(), h.SLPs(), h.Logger())
	return &gateway{h: h, cfg: cfg, ctl: ctl, api: manage.New(ctl, cfg.Management.Password)}, nil
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) { g.api.ServeHTTP(w, r) }

// Start loads the stored state, then serves the data plane on the
// host-owned listener (shared with the previous version during a swap).
func (g *gateway) Start(ctx context.Context) error {
	if err := g.ctl.Load(ctx); err != nil {
		return err
	}
	ln, err := g.h.Listen("tcp", g.cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway data plane on %s: %w", g.cfg.Listen, err)
	}
	g.ln = ln
	switch g.cfg.Engine {
	case "std":
		g.srv = &http.Server{Handler: g.ctl.GW, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	case "fast":
		g.srv = g.fastServer()
	default:
		g.srv = &proxy.EventServer{GW: g.ctl.GW, Fallback: g.fastServer(), ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout: 120 * time.Second, Logger: g.h.Logger(), Loops: g.cfg.Loops}
	}
	g.serving.Store(true)
	srv := g.srv
	g.h.Go("data-plane", func(context.Context) {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.serving.Store(false)
			g.h.Logger().Errorf("data plane stopped: %v", err)
		}
	})
	g.h.Go("registry-watch", g.ctl.WatchRegistry)
	g.h.Go("health-checks", g.ctl.GW.RunHealthChecks)
	g.h.Go("variables-flush", g.ctl.FlushVariables)
	g.h.Logger().Infof("data plane on %s, prefix %s, engine %s", ln.Addr(), g.cfg.Prefix, g.cfg.Engine)
	return nil
}

func (g *gateway) fastServer() *proxy.Server {
	return &proxy.Server{Handler: g.ctl.GW, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second,
		Logger: g.h.Logger()}
}

// Stop drains the data plane: no new connections on this version (the
// socket stays open for the next one), in-flight requests finish.
func (g *gateway) Stop(ctx context.Context) error {
	var err error
	if g.srv != nil {
		g.serving.Store(false)
		err = g.srv.Shutdown(ctx)
		_ = g.ln.Close()
	}
	g.ctl.Flush(ctx)
	g.ctl.GW.Close()
	return err
}

// Health reports whether the data plane is serving.
func (g *gateway) Health(context.Context) error {
	if !g.serving.Load() {
		return errors.New("data plane not serving")
	}
	return nil
}
