// Package dropin loads plugins dropped into the plugins directory: a new
// .so whose write has completed loads under the name and version it
// declares (replacing a loaded one of that name), and a removed file
// unloads what it backed.
package dropin

import (
	"context"
	"debug/buildinfo"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/plugd/plugd/host/internal/loader"
	"github.com/plugd/plugd/host/internal/plugins"
	"github.com/sirupsen/logrus"
)

// Watcher watches one directory.
type Watcher struct {
	Dir     string
	Loader  *loader.Loader
	Manager *plugins.Manager
	Log     logrus.FieldLogger
	// Settle is how long a file must stay unchanged before it is loaded.
	Settle time.Duration

	mu     sync.Mutex
	timers map[string]*time.Timer
}

// Candidate reports whether a file name may be a finished plugin: editors'
// and compilers' temporary files never are.
func Candidate(name string) bool {
	if !strings.HasSuffix(name, ".so") {
		return false
	}
	for _, p := range []string{".", "#", "~"} {
		if strings.HasPrefix(name, p) {
			return false
		}
	}
	return true
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer fw.Close()
	if err := fw.Add(w.Dir); err != nil {
		return err
	}
	w.timers = map[string]*time.Timer{}
	if w.Settle == 0 {
		w.Settle = 500 * time.Millisecond
	}
	w.Log.WithField("dir", w.Dir).Info("watching for dropped-in plugins")
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-fw.Errors:
			w.Log.WithError(err).Warn("watch error")
		case ev := <-fw.Events:
			name := filepath.Base(ev.Name)
			if !Candidate(name) {
				continue
			}
			switch {
			case ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename):
				w.cancel(name)
				w.removed(name)
			case ev.Has(fsnotify.Create) || ev.Has(fsnotify.Write) || ev.Has(fsnotify.Chmod):
				w.schedule(ctx, name)
			}
		}
	}
}

// schedule (re)starts the settle timer of name: every write pushes the
// load back, so a file still being copied is not looked at.
func (w *Watcher) schedule(ctx context.Context, name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.timers[name]; ok {
		t.Reset(w.Settle)
		return
	}
	w.timers[name] = time.AfterFunc(w.Settle, func() {
		w.mu.Lock()
		delete(w.timers, name)
		w.mu.Unlock()
		w.settled(ctx, name)
	})
}

func (w *Watcher) cancel(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.timers[name]; ok {
		t.Stop()
		delete(w.timers, name)
	}
}

// settled loads name if it is a complete Go plugin that is not loaded yet.
func (w *Watcher) settled(ctx context.Context, name string) {
	if ctx.Err() != nil {
		return
	}
	log := w.Log.WithField("file", name)
	path := filepath.Join(w.Dir, name)
	before, err := os.Stat(path)
	if err != nil {
		return
	}
	// A complete Go binary has readable build info (it sits near the end of
	// the data); a truncated or half-copied one does not.
	if _, err := buildinfo.ReadFile(path); err != nil {
		log.WithError(err).Warn("dropped-in file is not a complete Go plugin; ignored until it changes")
		return
	}
	if after, err := os.Stat(path); err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		w.schedule(ctx, name) // still being written
		return
	}
	if len(w.Manager.Loaded(name)) > 0 {
		return
	}
	abs, err := w.Loader.Resolve(name)
	if err != nil {
		log.WithError(err).Warn("dropped-in file refused")
		return
	}
	res := w.Loader.Trial(ctx, abs)
	if !res.OK {
		log.Warnf("dropped-in plugin refused: %s", res.Reason)
		return
	}
	if res.API {
		w.load(ctx, plugins.KindAPI, res.Name+"."+res.Version, name)
	}
	if res.SLP {
		w.load(ctx, plugins.KindSLP, res.Name, name)
	}
}

func (w *Watcher) load(ctx context.Context, kind plugins.Kind, name, file string) {
	log := w.Log.WithFields(logrus.Fields{"file": file, string(kind): name})
	if err := w.Manager.Load(ctx, kind, name, file); err != nil {
		log.WithError(err).Warn("drop-in load failed")
		return
	}
	log.Info("drop-in loaded")
}

func (w *Watcher) removed(name string) {
	for _, e := range w.Manager.Loaded(name) {
		if err := w.Manager.Unload(e.Kind, e.Name); err != nil {
			w.Log.WithError(err).Warn("unload after removal failed")
			continue
		}
		w.Log.WithFields(logrus.Fields{"file": name, string(e.Kind): e.Name}).Info("file removed: unloaded")
	}
}
