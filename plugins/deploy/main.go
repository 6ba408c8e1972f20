// Command deploy is the plugd deployment console (deploy.v1, seed 002):
// apps are registered, given versions (a lain.yaml-style spec plus files)
// and deployed as real processes supervised by the embedded driver, with
// web instances published in the host's service registry for the gateway.
//
// Processes outlive the plugin instance that started them: they run in
// their own process groups writing to log files, and their pids, start
// times and ports are in the store, so a swapped-in version of the plugin
// (or a restarted host) adopts them instead of restarting them.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"

	"github.com/plugd/plugd/plugins/deploy/console"
	"github.com/plugd/plugd/plugins/deploy/driver"
	"github.com/plugd/plugd/sdk"
)

// Plugin is the declaration the host looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "deploy",
	Version: "v1",
	NewAPI:  newAPI,
}

func main() {}

type plugin struct {
	c *console.Console
}

func newAPI(h sdk.Host) (sdk.API, error) {
	cfg := console.DefaultConfig()
	if err := h.Config(&cfg); err != nil {
		return nil, fmt.Errorf("deploy config: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Auth && len(cfg.Users) == 0 {
		h.Logger().Warn("deploy: auth is on and no users are configured: every request will be refused (set plugins.deploy.users, or auth: false for local use)")
	}
	drv := driver.NewLocal(driver.LocalConfig{
		Store: h.Store(), Services: h.Services(), Logger: h.Logger(), Go: h.Go,
		DataDir: h.DataDir(), Limits: cfg.Limits, StopGrace: cfg.StopGrace,
		LogMaxSize: cfg.LogMaxBytes, LogKeep: cfg.LogKeep,
	})
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &plugin{c: console.New(h, cfg, drv, hex.EncodeToString(b))}, nil
}

func (p *plugin) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.c.ServeHTTP(w, r) }

// Start adopts the running instances and restores the desired state.
func (p *plugin) Start(ctx context.Context) error { return p.c.Start(ctx) }

// Stop ends supervision. On a swap (sdk.StopReplaced) or a host shutdown
// (sdk.StopShutdown) the instances keep running for the next owner; on a
// final unload they are stopped, and the desired state stays in the store.
func (p *plugin) Stop(ctx context.Context) error { return p.c.Stop(ctx) }
