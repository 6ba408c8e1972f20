package plugins

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plugd/plugd/host/internal/config"
	"github.com/plugd/plugd/host/internal/listeners"
	"github.com/plugd/plugd/host/internal/loader"
	"github.com/plugd/plugd/host/internal/services"
	"github.com/plugd/plugd/host/internal/store"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// Kind is API or SLP.
type Kind string

const (
	KindAPI Kind = "api"
	KindSLP Kind = "slp"
)

// Reserved names cannot be used by plugin APIs.
var Reserved = map[string]bool{"runtime": true, "apim": true, "slpm": true, "slp": true}

// Manager holds the loaded APIs and SLPs.
type Manager struct {
	cfg       *config.Config
	loader    *loader.Loader
	db        *store.DB
	services  *services.Registry
	listeners *listeners.Pool
	log       *logrus.Logger

	mu     sync.Mutex // serializes load, swap and unload
	seq    int
	apis   atomic.Pointer[map[string]*instance] // name.version → active
	slps   atomic.Pointer[map[string]*instance] // name → active
	retire []*instance                          // replaced, draining or stopped (listing)
	failed map[string]failure                   // kind/name → last failed restore
	saved  []Entry                              // the persisted loaded set, in load order
	wg     sync.WaitGroup                       // drains in progress
}

type failure struct {
	entry Entry
	err   error
	at    time.Time
}

// Deps are what the manager needs from the host.
type Deps struct {
	Config    *config.Config
	Loader    *loader.Loader
	DB        *store.DB
	Services  *services.Registry
	Listeners *listeners.Pool
	Log       *logrus.Logger
}

// New returns an empty manager.
func New(d Deps) *Manager {
	m := &Manager{cfg: d.Config, loader: d.Loader, db: d.DB, services: d.Services, listeners: d.Listeners, log: d.Log, failed: map[string]failure{}}
	empty1, empty2 := map[string]*instance{}, map[string]*instance{}
	m.apis.Store(&empty1)
	m.slps.Store(&empty2)
	return m
}

// SplitAPIName splits "chatroom.v1" into "chatroom", "v1", validating both.
func SplitAPIName(s string) (name, version string, err error) {
	name, version, ok := strings.Cut(s, ".")
	if !ok || !loader.ValidName(name) || !loader.ValidVersion(version) {
		return "", "", sdk.Errorf(http.StatusBadRequest, "API name %q: want <name>.<version> matching ^[a-z][a-z0-9_]*\\.v[1-9][0-9]*$", s)
	}
	if Reserved[name] {
		return "", "", sdk.Errorf(http.StatusBadRequest, "API name %q is reserved for the host", name)
	}
	return name, version, nil
}

// Load loads file as the API or SLP called name, swapping out the current
// one of that name if any. It returns when the new instance serves; the old
// one drains in the background.
func (m *Manager) Load(ctx context.Context, kind Kind, name, file string) error {
	if kind == KindAPI {
		if _, _, err := SplitAPIName(name); err != nil {
			return err
		}
	} else if !loader.ValidName(name) {
		return sdk.Errorf(http.StatusBadRequest, "SLP name %q: want ^[a-z][a-z0-9_]*$", name)
	}
	decl, err := m.loader.Load(ctx, file)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	in, err := m.start(ctx, kind, name, file, decl)
	if err != nil {
		return err
	}
	m.publish(kind, name, in)
	delete(m.failed, string(kind)+"/"+name)
	m.remember(Entry{Kind: kind, Name: name, File: file})
	return m.save()
}

// start builds and starts an instance; nothing is published on error.
func (m *Manager) start(ctx context.Context, kind Kind, name, file string, decl *sdk.Declaration) (*instance, error) {
	m.seq++
	id := fmt.Sprintf("%s#%d", name, m.seq)
	log := m.log.WithFields(logrus.Fields{"plugin": name})
	hctx, cancel := context.WithCancel(context.Background())
	h := &pluginHost{m: m, name: name, decl: decl, log: log, ctx: hctx, cancel: cancel, services: m.services.Owned(name), draining: make(chan struct{})}
	in := newInstance(kind, id, name, file, h)
	// NewAPI/NewSLP and Start share one deadline; a hook that overruns it
	// fails the load instead of holding m.mu forever.
	sctx, scancel := context.WithTimeout(ctx, m.startTimeout())
	defer scancel()
	value, err := m.construct(sctx, kind, file, decl, h)
	in.value = value
	if err == nil {
		if s, ok := in.value.(sdk.Starter); ok {
			err = boundedCall(sctx, "Start", func() error { return s.Start(sctx) })
		}
	}
	if err != nil {
		h.shutdown(time.Second, log)
		if sdk.StatusOf(err) == http.StatusInternalServerError {
			err = sdk.Errorf(http.StatusUnprocessableEntity, "plugin %s failed to start: %v", name, err)
		}
		return nil, err
	}
	log.WithFields(logrus.Fields{"file": file, "load": id}).Info("loaded")
	return in, nil
}

// construct calls the declaration's NewAPI or NewSLP within ctx.
func (m *Manager) construct(ctx context.Context, kind Kind, file string, decl *sdk.Declaration, h sdk.Host) (any, error) {
	var value any
	var err error
	switch kind {
	case KindAPI:
		if decl.NewAPI == nil {
			return nil, sdk.Errorf(http.StatusUnprocessableEntity, "file %q declares no API (plugin %s has only an SLP)", file, decl.Name)
		}
		var api sdk.API
		err = boundedCall(ctx, "NewAPI", func() (e error) { api, e = decl.NewAPI(h); return e })
		if err == nil && api == nil {
			err = errors.New("NewAPI returned nil")
		}
		value = api
	case KindSLP:
		if decl.NewSLP == nil {
			return nil, sdk.Errorf(http.StatusUnprocessableEntity, "file %q declares no SLP (plugin %s has only an API)", file, decl.Name)
		}
		var slp sdk.SLP
		err = boundedCall(ctx, "NewSLP", func() (e error) { slp, e = decl.NewSLP(h); return e })
		if err == nil && slp == nil {
			err = errors.New("NewSLP returned nil")
		}
		value = slp
	}
	if err != nil {
		return nil, err
	}
	return value, nil
}

// startTimeout bounds NewAPI/NewSLP plus Start of one load.
func (m *Manager) startTimeout() time.Duration { return time.Duration(m.cfg.StopTimeout) * 3 }

// publish makes in the current instance of name and retires the old one.
func (m *Manager) publish(kind Kind, name string, in *instance) {
	ptr := m.table(kind)
	old := *ptr.Load()
	next := make(map[string]*instance, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	prev := old[name]
	if in == nil {
		delete(next, name)
	} else {
		next[name] = in
	}
	ptr.Store(&next)
	if prev != nil {
		why := sdk.StopReplaced
		if in == nil {
			why = sdk.StopUnloaded
		}
		m.retireInstance(prev, why)
	}
}

func (m *Manager) table(kind Kind) *atomic.Pointer[map[string]*instance] {
	if kind == KindAPI {
		return &m.apis
	}
	return &m.slps
}

func (m *Manager) retireInstance(in *instance, why sdk.StopReason) {
	in.close()
	m.retire = append(m.retire, in)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		log := m.log.WithField("plugin", in.name)
		in.drainAndStop(why, time.Duration(m.cfg.DrainTimeout), time.Duration(m.cfg.StopTimeout), log)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.pruneRetired()
		// Loads hold m.mu from Start to publish, so a new instance of this
		// name cannot have registered anything unless it is in the table.
		if why == sdk.StopUnloaded && (*m.table(in.kind).Load())[in.name] == nil {
			if n := m.services.RemoveOwner(in.name); n > 0 {
				log.Infof("removed %d service instance(s) it left registered", n)
			}
		}
	}()
}

// pruneRetired forgets stopped API instances (SLP versions stay listed for
// their used count until the next swap of that SLP is itself stopped).
func (m *Manager) pruneRetired() {
	keep := m.retire[:0]
	for _, in := range m.retire {
		if in.getState() != Stopped {
			keep = append(keep, in)
		}
	}
	m.retire = keep
}

// Unload removes name; its instance drains and stops in the background.
func (m *Manager) Unload(kind Kind, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, loaded := (*m.table(kind).Load())[name]
	_, failed := m.failed[string(kind)+"/"+name]
	if !loaded && !failed {
		return sdk.Errorf(http.StatusNotFound, "no %s named %q is loaded", strings.ToUpper(string(kind)), name)
	}
	delete(m.failed, string(kind)+"/"+name)
	if loaded {
		m.publish(kind, name, nil)
	}
	m.forget(kind, name)
	return m.save()
}

// API returns the active instance serving name.version, acquired; the
// caller must call release. nil if none. deadline is canceled when the
// instance's drain time after a swap or unload is up: the request's context
// should end with it.
func (m *Manager) API(name string) (api sdk.API, release func(), deadline context.Context) {
	for i := 0; i < 100; i++ { // retries only while a swap closes the one we found
		in := (*m.apis.Load())[name]
		if in == nil {
			return nil, nil, nil
		}
		if in.acquire() {
			return in.value.(sdk.API), in.release, in.deadline
		}
	}
	return nil, nil, nil
}

// Begin starts a session on the current version of SLP name.
func (m *Manager) Begin(name string) (sdk.Session, error) {
	for i := 0; i < 100; i++ {
		in := (*m.slps.Load())[name]
		if in == nil {
			return nil, fmt.Errorf("%w: %q", sdk.ErrNoSLP, name)
		}
		if in.acquire() {
			return &session{in: in}, nil
		}
	}
	return nil, fmt.Errorf("%w: %q (swapping)", sdk.ErrNoSLP, name)
}

type session struct {
	in   *instance
	once sync.Once
}

func (s *session) SLP() sdk.SLP    { return s.in.value }
func (s *session) Version() string { return s.in.id }

// Expired is closed when the session's version has passed its drain
// deadline after a swap or unload; the session should end.
func (s *session) Expired() <-chan struct{} { return s.in.deadline.Done() }

func (s *session) End() {
	s.once.Do(func() {
		s.in.used.Add(1)
		s.in.release()
	})
}

// Row is one line of a listing.
type Row struct {
	Kind   Kind      `json:"kind"`
	Name   string    `json:"name"`
	File   string    `json:"file,omitempty"`
	Load   string    `json:"load,omitempty"`
	State  State     `json:"state"`
	Time   time.Time `json:"time,omitempty"`
	Used   int64     `json:"used"`
	Using  int       `json:"using"`
	Error  string    `json:"error,omitempty"`
	Health string    `json:"health,omitempty"`
}

// List returns active, draining and failed entries of kind, by name.
func (m *Manager) List(kind Kind) []Row {
	m.mu.Lock()
	defer m.mu.Unlock()
	var rows []Row
	for _, in := range *m.table(kind).Load() {
		rows = append(rows, row(kind, in))
	}
	for _, in := range m.retire {
		if in.kind == kind && in.getState() == Draining {
			rows = append(rows, row(kind, in))
		}
	}
	for _, f := range m.failed {
		if f.entry.Kind == kind {
			rows = append(rows, Row{Kind: kind, Name: f.entry.Name, File: f.entry.File, State: Failed, Time: f.at, Error: f.err.Error()})
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		if rows[i].Name != rows[j].Name {
			return rows[i].Name < rows[j].Name
		}
		return rows[i].Time.After(rows[j].Time) // newest version first
	})
	return rows
}

func row(kind Kind, in *instance) Row {
	return Row{Kind: kind, Name: in.name, File: in.file, Load: in.id, State: in.getState(), Time: in.loaded, Used: in.used.Load(), Using: in.using()}
}

// Health asks the active instance of name for its health.
func (m *Manager) Health(ctx context.Context, kind Kind, name string) error {
	in := (*m.table(kind).Load())[name]
	if in == nil {
		return sdk.Errorf(http.StatusNotFound, "no %s named %q is loaded", kind, name)
	}
	if h, ok := in.value.(sdk.HealthChecker); ok {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(m.cfg.StopTimeout))
		defer cancel()
		return boundedCall(ctx, "Health", func() error { return h.Health(ctx) })
	}
	return nil
}

// Loaded reports whether file backs an active instance, and under which
// kind and name (first match). The drop-in watcher uses it.
func (m *Manager) Loaded(file string) []Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Entry
	for _, kind := range []Kind{KindAPI, KindSLP} {
		for name, in := range *m.table(kind).Load() {
			if in.file == file {
				out = append(out, Entry{Kind: kind, Name: name, File: file})
			}
		}
	}
	return out
}

// StopAll stops every instance in reverse load order (after all have
// stopped taking new work), then waits for swaps still draining.
func (m *Manager) StopAll() {
	m.mu.Lock()
	var order []*instance
	for i := len(m.saved) - 1; i >= 0; i-- {
		e := m.saved[i]
		if in := (*m.table(e.Kind).Load())[e.Name]; in != nil {
			order = append(order, in)
			in.close()
		}
	}
	empty1, empty2 := map[string]*instance{}, map[string]*instance{}
	m.apis.Store(&empty1)
	m.slps.Store(&empty2)
	m.mu.Unlock()
	for _, in := range order {
		in.drainAndStop(sdk.StopShutdown, time.Duration(m.cfg.DrainTimeout), time.Duration(m.cfg.StopTimeout), m.log.WithField("plugin", in.name))
	}
	m.wg.Wait()
}

func (m *Manager) pluginDataDir(name string) string {
	dir := filepath.Join(m.cfg.DataDir, "plugins", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		m.log.WithError(err).Errorf("data dir for %s", name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir
	}
	return abs
}
