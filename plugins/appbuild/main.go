// Command appbuild is the plugd plugin that manages mobile-app builds: apps,
// versions and channels (CRUD under /api/app with HTTP Basic auth), and
// builds that run a configured recipe per platform, turn one signed Android
// APK into one package per channel by writing the channel into its APK
// Signing Block, and serve the packages for download.
//
// Durable state lives in the SDK store (records) and the data dir (logs and
// artifacts), so a swap or a restart loses nothing. Swap and restart
// semantics for running builds:
//   - Stop of a replaced instance stops taking queued builds and waits, until
//     its deadline, for the builds it runs; the new instance takes the queue.
//   - A build whose runner is gone (the host restarted, or an old instance's
//     Stop deadline passed and its process was killed) is marked failed with
//     the reason; a running build is detected as orphaned by its runner lease
//     (a store key with a TTL that the runner renews), so no build stays
//     "running" forever.
//   - Queued builds survive both and run on the next instance.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/plugd/plugd/sdk"
	"golang.org/x/crypto/bcrypt"
)

// Plugin is the declaration the host loads.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "appbuild",
	Version: "v1",
	NewAPI:  func(h sdk.Host) (sdk.API, error) { return newPlugin(h) },
}

func main() {}

// Config is the plugins.appbuild section of the host config.
type Config struct {
	// Users allowed in by HTTP Basic auth, with bcrypt password hashes.
	// None: the bootstrap user admin (see bootstrap.go).
	Users []User `yaml:"users"`
	// Realm is the Basic auth realm.
	Realm string `yaml:"realm"`
	// MaxConcurrent is the number of builds running at once, over all apps.
	MaxConcurrent int `yaml:"max_concurrent"`
	// Timeout is the default limit of one recipe run.
	Timeout time.Duration `yaml:"timeout"`
	// Retention is how many builds with artifacts are kept per app; older
	// builds keep their record and log but lose their artifacts. 0 keeps all.
	Retention int `yaml:"retention"`
	// MaxLogBytes caps a build's log; output beyond it is dropped (noted).
	MaxLogBytes int64 `yaml:"max_log_bytes"`
	// MaxBodyBytes caps request bodies.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// PublicDownloads serves /download/ without auth (package links for
	// testers); everything else always needs auth.
	PublicDownloads bool `yaml:"public_downloads"`
	// Recipes per platform: "android", "ios".
	Recipes map[string]Recipe `yaml:"recipes"`
}

// User is one Basic auth user.
type User struct {
	Name string `yaml:"name"`
	// PasswordBcrypt is a bcrypt hash ($2a$/$2b$/$2y$), e.g. from
	// `htpasswd -bnBC 10 "" PASSWORD | tr -d ':\n'`.
	PasswordBcrypt string `yaml:"password_bcrypt"`
}

// Channel modes of a recipe.
const (
	// ModeStamp: run the recipe once; it must yield one APK signed with
	// scheme v2+, and each channel's package is that APK with the channel
	// written into its signing block.
	ModeStamp = "stamp"
	// ModePerChannel: run the recipe once per channel (APPBUILD_CHANNEL set);
	// every file it leaves in the output dir is that channel's package.
	ModePerChannel = "per_channel"
	// ModeStampOrPerChannel: stamp when the APK allows it, else fall back to
	// one run per channel.
	ModeStampOrPerChannel = "stamp_or_per_channel"
)

// Recipe is how one platform is built.
type Recipe struct {
	// Command is the program and its arguments (no shell unless you name
	// one, e.g. ["sh", "-c", "./gradlew assembleRelease && cp ..."]).
	Command []string `yaml:"command"`
	// Dir is the working directory (the source checkout); empty means a
	// fresh directory per build under the data dir.
	Dir string `yaml:"dir"`
	// Env adds KEY=VALUE pairs to the host's environment.
	Env []string `yaml:"env"`
	// Timeout overrides the global timeout for one run.
	Timeout time.Duration `yaml:"timeout"`
	// ChannelMode is stamp, per_channel or stamp_or_per_channel. Default:
	// stamp for android, per_channel for ios.
	ChannelMode string `yaml:"channel_mode"`
}

func defaultConfig() Config {
	return Config{
		Realm:         "appbuild",
		MaxConcurrent: 2,
		Timeout:       30 * time.Minute,
		Retention:     10,
		MaxLogBytes:   16 << 20,
		MaxBodyBytes:  64 << 10,
	}
}

func (c *Config) validate() error {
	if c.MaxConcurrent < 1 {
		return fmt.Errorf("max_concurrent must be at least 1, got %d", c.MaxConcurrent)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("timeout must be positive, got %s", c.Timeout)
	}
	if c.Retention < 0 {
		return fmt.Errorf("retention must be 0 (keep all) or more, got %d", c.Retention)
	}
	if c.MaxLogBytes <= 0 || c.MaxBodyBytes <= 0 {
		return fmt.Errorf("max_log_bytes and max_body_bytes must be positive")
	}
	if c.Realm == "" || strings.ContainsAny(c.Realm, "\"\\\r\n") {
		return fmt.Errorf("realm must be non-empty without quotes, backslashes or newlines")
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		if u.Name == "" || strings.ContainsAny(u.Name, ":") {
			return fmt.Errorf("users[%d]: name must be non-empty and contain no ':'", i)
		}
		if seen[u.Name] {
			return fmt.Errorf("users[%d]: duplicate user %q", i, u.Name)
		}
		seen[u.Name] = true
		if _, err := bcrypt.Cost([]byte(u.PasswordBcrypt)); err != nil {
			return fmt.Errorf("users[%d] (%s): password_bcrypt is not a bcrypt hash: %v", i, u.Name, err)
		}
	}
	for p, r := range c.Recipes {
		if !validPlatform(p) {
			return fmt.Errorf("recipes: unknown platform %q (want android or ios)", p)
		}
		if len(r.Command) == 0 || r.Command[0] == "" {
			return fmt.Errorf("recipes.%s: command is empty", p)
		}
		if r.Timeout < 0 {
			return fmt.Errorf("recipes.%s: negative timeout", p)
		}
		switch r.ChannelMode {
		case "":
			if p == "android" {
				r.ChannelMode = ModeStamp
			} else {
				r.ChannelMode = ModePerChannel
			}
		case ModeStamp, ModeStampOrPerChannel:
			if p != "android" {
				return fmt.Errorf("recipes.%s: channel_mode %s is for android only", p, r.ChannelMode)
			}
		case ModePerChannel:
		default:
			return fmt.Errorf("recipes.%s: channel_mode %q (want stamp, per_channel or stamp_or_per_channel)", p, r.ChannelMode)
		}
		for _, kv := range r.Env {
			if !strings.Contains(kv, "=") {
				return fmt.Errorf("recipes.%s: env entry %q is not KEY=VALUE", p, kv)
			}
		}
		c.Recipes[p] = r
	}
	return nil
}

type plugin struct {
	h     sdk.Host
	cfg   Config
	store sdk.Store
	auth  *authenticator // set by Start
	// urlPrefix is where the host mounts us ("/appbuild/v1").
	urlPrefix string

	dataDir, artifactsDir, logsDir, workDir string

	mu       sync.Mutex
	running  map[string]*runningBuild // builds this instance runs
	adopted  map[string]bool          // builds handed over to this instance
	token    string                   // this instance, in handover records
	stopping bool
	wake     chan struct{}
	wg       sync.WaitGroup // runner goroutines
	stopCtx  context.Context
	stopAll  context.CancelFunc
	// draining closes when the host starts draining this instance (a swap
	// or unload): log follows end so the swap completes at once.
	draining <-chan struct{}
	// procID identifies this host process, to tell a lease of ours from one
	// left by a dead process.
	procID string
}

func newPlugin(h sdk.Host) (*plugin, error) {
	cfg := defaultConfig()
	if err := h.Config(&cfg); err != nil {
		return nil, fmt.Errorf("appbuild config: %w", err)
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("appbuild config: %w", err)
	}
	p := &plugin{
		h:         h,
		cfg:       cfg,
		store:     h.Store(),
		urlPrefix: "/" + strings.ReplaceAll(h.Name(), ".", "/"),
		dataDir:   h.DataDir(),
		running:   map[string]*runningBuild{},
		adopted:   map[string]bool{},
		token:     newID(),
		wake:      make(chan struct{}, 1),
		procID:    processID(),
	}
	p.artifactsDir = filepath.Join(p.dataDir, "artifacts")
	p.logsDir = filepath.Join(p.dataDir, "logs")
	p.workDir = filepath.Join(p.dataDir, "work")
	p.stopCtx, p.stopAll = context.WithCancel(context.Background())
	p.draining = h.Draining()
	return p, nil
}

// Start prepares the data dir, sets up the users (the bootstrap user when
// none are configured, see bootstrap.go), settles builds orphaned by a previous process
// and starts the dispatcher.
func (p *plugin) Start(ctx context.Context) error {
	for _, d := range []string{p.artifactsDir, p.logsDir, p.workDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("appbuild: %w", err)
		}
	}
	users, err := p.bootstrap(ctx)
	if err != nil {
		return err
	}
	// Requests reach this instance only after Start returns.
	p.auth = newAuthenticator(users, p.cfg.Realm)
	if err := p.reapOrphans(ctx); err != nil {
		return err
	}
	if err := p.announce(ctx); err != nil {
		return err
	}
	p.h.Go("appbuild-dispatcher", p.dispatch)
	return nil
}

// Stop stops taking builds, hands running ones over to the instance that
// replaces this one (see handover.go) and, for those nobody adopts before
// ctx ends (unload, host shutdown), stops them and records them as failed.
func (p *plugin) Stop(ctx context.Context) error {
	p.mu.Lock()
	p.stopping = true
	p.mu.Unlock()
	p.poke()
	p.store.Delete(ctx, kInstance+p.token)
	// Keep a little of the deadline to stop what is not adopted.
	hctx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		hctx, cancel = context.WithDeadline(ctx, dl.Add(-time.Until(dl)/4))
		defer cancel()
	}
	left := p.handOver(hctx)
	for _, id := range left {
		p.mu.Lock()
		rb := p.running[id]
		adopted := p.adopted[id]
		p.mu.Unlock()
		switch {
		case rb != nil:
			rb.stop(reasonStopped)
		case adopted:
			// Watched for an older instance whose runner is detached:
			// stop its recipe and record the failure here.
			cancelAdopted(filepath.Join(p.workDir, id), reasonStopped)
			p.finish(context.Background(), id, func(b *Build) { b.Status, b.Reason = StatusFailed, reasonStopped })
		}
	}
	// Wait for our own runners that are not detached.
	for {
		p.mu.Lock()
		n := 0
		for _, rb := range p.running {
			if !rb.isDetached() {
				n++
			}
		}
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			p.stopAll()
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	p.stopAll()
	return nil
}

// Health reports configuration problems that make the plugin unusable.
func (p *plugin) Health(ctx context.Context) error {
	if p.auth == nil || len(p.auth.users) == 0 {
		return fmt.Errorf("no users (plugins.appbuild.users)")
	}
	return nil
}

func (p *plugin) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func validPlatform(s string) bool { return s == "android" || s == "ios" }
