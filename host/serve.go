package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/plugd/plugd/host/internal/admin"
	"github.com/plugd/plugd/host/internal/config"
	"github.com/plugd/plugd/host/internal/dropin"
	"github.com/plugd/plugd/host/internal/listeners"
	"github.com/plugd/plugd/host/internal/loader"
	"github.com/plugd/plugd/host/internal/plugins"
	"github.com/plugd/plugd/host/internal/services"
	"github.com/plugd/plugd/host/internal/store"
	"github.com/plugd/plugd/internal/compat"
	"github.com/sirupsen/logrus"
	"golang.org/x/term"
)

const defaultConfig = "configs/plugd.yaml"

func loadConfig(args []string) (*config.Config, error) {
	fs := flag.NewFlagSet("plugd", flag.ContinueOnError)
	cfgPath := fs.String("config", "", "config file (default "+defaultConfig+" when it exists)")
	listen := fs.String("listen", "", "management API address (overrides the config)")
	pluginsDir := fs.String("plugins", "", "plugins directory (overrides the config)")
	dataDir := fs.String("data", "", "data directory (overrides the config)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	cfg := config.Default()
	path := *cfgPath
	if path == "" {
		if _, err := os.Stat(defaultConfig); err == nil {
			path = defaultConfig
		}
	}
	if path != "" {
		var err error
		if cfg, err = config.Load(path); err != nil {
			return nil, err
		}
	}
	override(&cfg.Listen, *listen)
	override(&cfg.PluginsDir, *pluginsDir)
	override(&cfg.DataDir, *dataDir)
	return cfg, cfg.Validate()
}

func override(field *string, flagValue string) {
	if flagValue != "" {
		*field = flagValue
	}
}

func newLogger(cfg *config.Config) (*logrus.Logger, error) {
	log := logrus.New()
	lvl, err := logrus.ParseLevel(cfg.Log.Level)
	if err != nil {
		return nil, fmt.Errorf("log.level: %w", err)
	}
	log.SetLevel(lvl)
	if cfg.Log.Format == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, DisableColors: !term.IsTerminal(int(os.Stderr.Fd()))})
	}
	return log, nil
}

func serve(args []string) error {
	cfg, err := loadConfig(args)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg)
	if err != nil {
		return err
	}
	for _, d := range []string{cfg.PluginsDir, cfg.DataDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	hostInfo, err := compat.HostBuildInfo()
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	db, err := store.Open(filepath.Join(cfg.DataDir, "store.db"))
	if err != nil {
		return err
	}
	defer db.Close()

	ld := &loader.Loader{Dir: cfg.PluginsDir, Exe: exe, CheckTimeout: time.Duration(cfg.CheckTimeout), Host: hostInfo}
	reg := services.New()
	pool := listeners.New()
	mgr := plugins.New(plugins.Deps{Config: cfg, Loader: ld, DB: db, Services: reg, Listeners: pool, Log: log})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	token := ""
	if host, _, _ := net.SplitHostPort(cfg.Listen); !config.IsLoopback(host) {
		token = cfg.Token
	}
	srv := &http.Server{
		Handler:           (&admin.Server{Manager: mgr, Log: log, Token: token, NoAccessLog: !cfg.AccessLog()}).Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// Restore before serving: the socket is bound (a port conflict fails at
	// once) and early clients wait in its queue, so nobody sees a 404 for a
	// plugin that is about to be restored.
	if err := mgr.Restore(ctx); err != nil {
		log.WithError(err).Error("restoring the loaded set")
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.WithFields(logrus.Fields{"listen": ln.Addr().String(), "plugins": cfg.PluginsDir, "data": cfg.DataDir}).Info("plugd serving")
	if cfg.WatchEnabled() {
		w := &dropin.Watcher{Dir: cfg.PluginsDir, Loader: ld, Manager: mgr, Log: log}
		go func() {
			if err := w.Run(ctx); err != nil {
				log.WithError(err).Error("drop-in watcher stopped")
			}
		}()
	}
	go housekeeping(ctx, db, reg, log)

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	log.Info("shutting down: draining requests, then stopping plugins in reverse load order")
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.DrainTimeout))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.WithError(err).Warn("requests still running at the drain deadline")
	}
	mgr.StopAll()
	pool.CloseAll()
	log.Info("stopped")
	return nil
}

// housekeeping expires TTL keys and service instances.
func housekeeping(ctx context.Context, db *store.DB, reg *services.Registry, log logrus.FieldLogger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			reg.Expire()
			if n++; n%60 == 0 {
				if err := db.Sweep(); err != nil {
					log.WithError(err).Warn("store sweep")
				}
			}
		}
	}
}
