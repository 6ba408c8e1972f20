package plugins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Entry is one element of the persisted loaded set.
type Entry struct {
	Kind Kind   `json:"kind"`
	Name string `json:"name"`
	File string `json:"file"`
}

type stateFile struct {
	Loaded []Entry `json:"loaded"`
}

func (m *Manager) statePath() string { return filepath.Join(m.cfg.DataDir, "loaded.json") }

// remember puts e in the loaded set, replacing an entry of the same name
// but keeping its position, so that restore order stays load order.
func (m *Manager) remember(e Entry) {
	for i, s := range m.saved {
		if s.Kind == e.Kind && s.Name == e.Name {
			m.saved[i] = e
			return
		}
	}
	m.saved = append(m.saved, e)
}

func (m *Manager) forget(kind Kind, name string) {
	out := m.saved[:0]
	for _, s := range m.saved {
		if s.Kind != kind || s.Name != name {
			out = append(out, s)
		}
	}
	m.saved = out
}

// save writes the loaded set atomically: temp file, fsync, rename, fsync dir.
func (m *Manager) save() error {
	raw, err := json.MarshalIndent(stateFile{Loaded: m.saved}, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(m.statePath(), append(raw, '\n'))
}

// WriteFileAtomic replaces path with data so that a crash leaves either the
// old or the new content, never a mix.
func WriteFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // no-op after the rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Restore loads the persisted set in order. An entry that fails is listed
// as failed and kept in the set (so it is retried at the next start); the
// host starts anyway.
func (m *Manager) Restore(ctx context.Context) error {
	raw, err := os.ReadFile(m.statePath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st stateFile
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("%s is corrupt (%v); move it away to start with nothing loaded", m.statePath(), err)
	}
	for _, e := range st.Loaded {
		if err := m.Load(ctx, e.Kind, e.Name, e.File); err != nil {
			m.log.WithFields(map[string]any{"plugin": e.Name, "file": e.File}).WithError(err).Error("restore failed; listed as failed")
			m.mu.Lock()
			m.failed[string(e.Kind)+"/"+e.Name] = failure{entry: e, err: err, at: time.Now()}
			m.remember(e)
			m.mu.Unlock()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.save()
}
