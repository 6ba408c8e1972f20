// Package console is the deploy plugin's API (seed 002): repos,
// maintainers and roles, versions, apps, procs, resources, asynchronous
// operations and logs. What runs is delegated to a driver.Driver.
package console

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/plugins/deploy/driver"
	"github.com/plugd/plugd/plugins/deploy/spec"
	"github.com/plugd/plugd/sdk"
)

// Config is the plugin's section plugins.deploy of the host config.
type Config struct {
	// Auth requires an access-token header on every request (default
	// true); false opens everything, for local use.
	Auth bool `yaml:"auth"`
	// Users and their tokens.
	Users []User `yaml:"users"`
	// Admins are user names that may change every app.
	Admins []string `yaml:"admins"`
	// Limits is how cpu/memory are enforced: auto (cgroup v2 with the cpu
	// and memory controllers, else writable cgroup v1 hierarchies, else
	// rlimits and a resident-memory watchdog), cgroup (the same, warning
	// when it falls back) or rlimit.
	Limits string `yaml:"limits"`
	// StopGrace is the time between SIGTERM and SIGKILL (default 5s).
	StopGrace time.Duration `yaml:"stop_grace"`
	// MaxUpload bounds a version upload in bytes (default 512 MiB).
	MaxUpload int64 `yaml:"max_upload"`
	// OperationTTL is how long finished operations are kept (default 7 days).
	OperationTTL time.Duration `yaml:"operation_ttl"`
	// LogMaxSize is the size at which an instance's stdout/stderr log is
	// rotated ("10M" by default; K, M, G suffixes); LogKeep how many
	// rotated files are kept (default 3).
	LogMaxSize string `yaml:"log_max_size"`
	LogKeep    int    `yaml:"log_keep"`
	// LogMaxBytes is LogMaxSize parsed by Validate.
	LogMaxBytes int64 `yaml:"-"`
}

// User is an API user.
type User struct {
	Name  string `yaml:"name"`
	Token string `yaml:"token"`
}

// DefaultConfig is the configuration before the host's section is applied.
func DefaultConfig() Config {
	return Config{Auth: true, Limits: "auto", StopGrace: 5 * time.Second, MaxUpload: 512 << 20, OperationTTL: 7 * 24 * time.Hour,
		LogMaxSize: "10M", LogKeep: 3}
}

// Validate checks a config.
func (c *Config) Validate() error {
	switch c.Limits {
	case "auto", "cgroup", "rlimit":
	default:
		return fmt.Errorf("deploy: limits %q: want auto, cgroup or rlimit", c.Limits)
	}
	seen := map[string]bool{}
	for _, u := range c.Users {
		if u.Name == "" || len(u.Token) < 8 {
			return fmt.Errorf("deploy: user %q: needs a name and a token of 8+ characters", u.Name)
		}
		if seen[u.Name] {
			return fmt.Errorf("deploy: user %q listed twice", u.Name)
		}
		seen[u.Name] = true
	}
	for _, a := range c.Admins {
		if !seen[a] {
			return fmt.Errorf("deploy: admin %q is not in users", a)
		}
	}
	if c.MaxUpload <= 0 {
		c.MaxUpload = 512 << 20
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 5 * time.Second
	}
	if c.OperationTTL <= 0 {
		c.OperationTTL = 7 * 24 * time.Hour
	}
	if c.LogMaxSize == "" {
		c.LogMaxSize = "10M"
	}
	n, err := spec.ParseSize(c.LogMaxSize)
	if err != nil || n < 4096 {
		return fmt.Errorf("deploy: log_max_size %q: want a size of 4K or more, like 10M", c.LogMaxSize)
	}
	c.LogMaxBytes = n
	if c.LogKeep < 1 || c.LogKeep > 100 {
		return fmt.Errorf("deploy: log_keep %d: want 1..100", c.LogKeep)
	}
	return nil
}

// Console serves the API.
type Console struct {
	h      sdk.Host
	cfg    Config
	drv    driver.Driver
	router *httprouter.Router
	id     string // this plugin instance, for operation records

	opMu    sync.Mutex
	appLock map[string]*sync.Mutex
	opCtx   context.Context
	opStop  context.CancelFunc
	opWG    sync.WaitGroup
}

// New builds the console over a driver.
func New(h sdk.Host, cfg Config, drv driver.Driver, id string) *Console {
	c := &Console{h: h, cfg: cfg, drv: drv, id: id, appLock: map[string]*sync.Mutex{}}
	c.opCtx, c.opStop = context.WithCancel(context.Background())
	c.routes()
	return c
}

func (c *Console) releaseDir(app, mv string) string {
	return filepath.Join(c.h.DataDir(), "releases", app, mv)
}

// caller is the authenticated user.
type caller struct {
	name  string
	admin bool // global admin
}

func (c *Console) authenticate(r *http.Request) (*caller, error) {
	if !c.cfg.Auth {
		return &caller{name: "anonymous", admin: true}, nil
	}
	tok := r.Header.Get("access-token")
	if tok == "" {
		return nil, sdk.Errorf(http.StatusUnauthorized, "missing access-token header")
	}
	// compare digests in constant time so neither length nor content leaks
	want := sha256.Sum256([]byte(tok))
	var found *User
	for i := range c.cfg.Users {
		got := sha256.Sum256([]byte(c.cfg.Users[i].Token))
		if subtle.ConstantTimeCompare(want[:], got[:]) == 1 {
			found = &c.cfg.Users[i]
		}
	}
	if found == nil {
		return nil, sdk.Errorf(http.StatusUnauthorized, "invalid access-token")
	}
	u := &caller{name: found.Name}
	for _, a := range c.cfg.Admins {
		if a == found.Name {
			u.admin = true
		}
	}
	return u, nil
}

func (c *Console) knownUser(name string) bool {
	if !c.cfg.Auth {
		return true
	}
	for _, u := range c.cfg.Users {
		if u.Name == name {
			return true
		}
	}
	return false
}

// role is the caller's role on app: "admin" or "normal" as a maintainer,
// "admin" for global admins, "" for none.
func (c *Console) role(ctx context.Context, u *caller, app string) string {
	var m Maintainer
	if err := getJSON(ctx, c.h.Store(), pfxMaint+app+"/"+u.name, &m); err == nil {
		if u.admin {
			return RoleAdmin
		}
		return m.Role
	}
	if u.admin {
		return RoleAdmin
	}
	return ""
}

// mayChange: maintainers (any role) and global admins change an app.
func (c *Console) mayChange(ctx context.Context, u *caller, app string) error {
	if c.role(ctx, u, app) == "" {
		return sdk.Errorf(http.StatusForbidden, "user %q is not a maintainer of %q", u.name, app)
	}
	return nil
}

// mayAdmin: app admins and global admins manage maintainers.
func (c *Console) mayAdmin(ctx context.Context, u *caller, app string) error {
	if c.role(ctx, u, app) != RoleAdmin {
		return sdk.Errorf(http.StatusForbidden, "user %q is not an admin of %q", u.name, app)
	}
	return nil
}

type handler func(w http.ResponseWriter, r *http.Request, ps httprouter.Params, u *caller) error

func (c *Console) wrap(h handler) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		u, err := c.authenticate(r)
		if err == nil {
			err = h(w, r, ps, u)
		}
		if err != nil {
			if sdk.StatusOf(err) == http.StatusInternalServerError {
				c.h.Logger().Errorf("%s %s: %v", r.Method, r.URL.Path, err)
			}
			sdk.WriteError(w, err)
		}
	}
}

// ServeHTTP accepts every path with or without its trailing slash.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p := r.URL.Path; len(p) > 1 && strings.HasSuffix(p, "/") {
		r2 := r.Clone(r.Context())
		r2.URL.Path = strings.TrimRight(p, "/")
		if r2.URL.Path == "" {
			r2.URL.Path = "/"
		}
		r2.URL.RawPath = ""
		r = r2
	}
	c.router.ServeHTTP(w, r)
}

func (c *Console) routes() {
	rt := httprouter.New()
	rt.RedirectTrailingSlash = false
	rt.RedirectFixedPath = false
	rt.HandleMethodNotAllowed = true
	rt.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sdk.WriteError(w, sdk.Errorf(http.StatusNotFound, "no endpoint %s", r.URL.Path))
	})
	rt.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sdk.WriteError(w, sdk.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path))
	})
	rt.PanicHandler = func(w http.ResponseWriter, r *http.Request, p any) {
		c.h.Logger().Errorf("panic serving %s %s: %v", r.Method, r.URL.Path, p)
		sdk.WriteError(w, sdk.Errorf(http.StatusInternalServerError, "internal error"))
	}
	rt.GET("/", c.wrap(c.index))
	rt.GET("/api/v1/repos", c.wrap(c.listRepos))
	rt.POST("/api/v1/repos", c.wrap(c.createRepo))
	rt.GET("/api/v1/repos/:app", c.wrap(c.getRepo))
	rt.GET("/api/v1/repos/:app/roles", c.wrap(c.getMyRole))
	rt.GET("/api/v1/repos/:app/roles/:username", c.wrap(c.getRole))
	rt.GET("/api/v1/repos/:app/maintainers", c.wrap(c.listMaintainers))
	rt.POST("/api/v1/repos/:app/maintainers", c.wrap(c.addMaintainer))
	rt.GET("/api/v1/repos/:app/maintainers/:username", c.wrap(c.getMaintainer))
	rt.DELETE("/api/v1/repos/:app/maintainers/:username", c.wrap(c.deleteMaintainer))
	rt.GET("/api/v1/repos/:app/versions", c.wrap(c.listVersions))
	rt.POST("/api/v1/repos/:app/versions", c.wrap(c.createVersion))
	rt.GET("/api/v1/repos/:app/versions/:mv", c.wrap(c.getVersion))
	rt.GET("/api/v1/apps", c.wrap(c.listApps))
	rt.POST("/api/v1/apps", c.wrap(c.deployApp))
	rt.GET("/api/v1/apps/:app", c.wrap(c.getApp))
	rt.PUT("/api/v1/apps/:app", c.wrap(c.updateApp))
	rt.DELETE("/api/v1/apps/:app", c.wrap(c.undeployApp))
	rt.GET("/api/v1/apps/:app/procs", c.wrap(c.listProcs))
	rt.POST("/api/v1/apps/:app/procs", c.wrap(c.deployProc))
	rt.GET("/api/v1/apps/:app/procs/:proc", c.wrap(c.getProc))
	rt.PATCH("/api/v1/apps/:app/procs/:proc", c.wrap(c.patchProc))
	rt.DELETE("/api/v1/apps/:app/procs/:proc", c.wrap(c.deleteProc))
	rt.GET("/api/v1/apps/:app/procs/:proc/logs", c.wrap(c.procLogs))
	rt.GET("/api/v1/apps/:app/operations", c.wrap(c.listAppOps))
	rt.GET("/api/v1/apps/:app/operations/:id", c.wrap(c.getAppOp))
	rt.GET("/api/v1/operations/:id", c.wrap(c.getOp))
	rt.GET("/api/v1/resources/:resource/instances", c.wrap(c.resourceInstances))
	c.router = rt
}

func (c *Console) index(w http.ResponseWriter, r *http.Request, _ httprouter.Params, _ *caller) error {
	sdk.WriteJSON(w, http.StatusOK, map[string]any{
		"name": "deploy", "driver": c.drv.Name(), "auth": c.cfg.Auth,
		"endpoints": []string{
			"GET|POST /api/v1/repos/", "GET /api/v1/repos/:app/", "GET /api/v1/repos/:app/roles/", "GET /api/v1/repos/:app/roles/:username/",
			"GET|POST /api/v1/repos/:app/maintainers/", "GET|DELETE /api/v1/repos/:app/maintainers/:username/",
			"GET|POST /api/v1/repos/:app/versions/", "GET /api/v1/repos/:app/versions/:meta_version/",
			"GET|POST /api/v1/apps/", "GET|PUT|DELETE /api/v1/apps/:app/", "GET|POST /api/v1/apps/:app/procs/",
			"GET|PATCH|DELETE /api/v1/apps/:app/procs/:proc/", "GET /api/v1/apps/:app/procs/:proc/logs?tail=N&follow=1&instance=ID",
			"GET /api/v1/apps/:app/operations/", "GET /api/v1/operations/:id", "GET /api/v1/resources/:resource/instances/",
		}})
	return nil
}
