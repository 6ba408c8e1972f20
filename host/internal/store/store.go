// Package store is the host's embedded key-value store: one bbolt file in the
// data dir, one bucket per plugin namespace, values wrapped with an optional
// expiry so that sdk.WithTTL works without a background writer per key.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/plugd/plugd/sdk"
	bolt "go.etcd.io/bbolt"
)

// DB is the store file shared by every namespace.
type DB struct {
	db *bolt.DB

	mu       sync.Mutex
	watchers map[*watcher]struct{}
}

type watcher struct {
	ns, prefix string
	ch         chan sdk.Event
}

// Open opens (creating if needed) the bbolt file at path.
func Open(path string) (*DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w (is another plugd using this data dir?)", path, err)
	}
	return &DB{db: db, watchers: map[*watcher]struct{}{}}, nil
}

// Close closes the file.
func (d *DB) Close() error { return d.db.Close() }

// Namespace returns the sdk.Store of one plugin.
func (d *DB) Namespace(ns string) sdk.Store { return &nsStore{d: d, ns: ns} }

// Sweep deletes expired keys in every namespace; the host runs it now and
// then so that expired values do not accumulate.
func (d *DB) Sweep() error {
	now := time.Now()
	var events []nsEvent
	err := d.db.Update(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if _, ok := decode(v, now); !ok {
					if err := c.Delete(); err != nil {
						return err
					}
					events = append(events, nsEvent{string(name), sdk.Event{Type: sdk.EventDelete, Key: string(k)}})
				}
			}
			return nil
		})
	})
	d.publish(events)
	return err
}

type nsEvent struct {
	ns string
	ev sdk.Event
}

func (d *DB) publish(events []nsEvent) {
	if len(events) == 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range events {
		for w := range d.watchers {
			if w.ns == e.ns && strings.HasPrefix(e.ev.Key, w.prefix) {
				select {
				case w.ch <- e.ev:
				default: // slow reader: drop rather than block writers
				}
			}
		}
	}
}

// A value is stored as 8 bytes of expiry (unix nanoseconds, 0 = never)
// followed by the user's bytes.
func encode(v []byte, ttl time.Duration) []byte {
	out := make([]byte, 8+len(v))
	if ttl > 0 {
		binary.BigEndian.PutUint64(out, uint64(time.Now().Add(ttl).UnixNano()))
	}
	copy(out[8:], v)
	return out
}

func decode(raw []byte, now time.Time) ([]byte, bool) {
	if len(raw) < 8 {
		return nil, false
	}
	if exp := binary.BigEndian.Uint64(raw); exp != 0 && now.UnixNano() >= int64(exp) {
		return nil, false
	}
	return raw[8:], true
}

type nsStore struct {
	d  *DB
	ns string
}

func (s *nsStore) Get(ctx context.Context, key string) (v []byte, err error) {
	err = s.d.db.View(func(btx *bolt.Tx) error {
		v, err = (&tx{s: s, btx: btx}).Get(key)
		return err
	})
	return v, err
}

func (s *nsStore) Put(ctx context.Context, key string, value []byte, opts ...sdk.PutOption) error {
	return s.Update(ctx, func(t sdk.Tx) error { return t.Put(key, value, opts...) })
}

func (s *nsStore) Delete(ctx context.Context, key string) error {
	return s.Update(ctx, func(t sdk.Tx) error { return t.Delete(key) })
}

func (s *nsStore) List(ctx context.Context, prefix string) (kvs []sdk.KV, err error) {
	err = s.d.db.View(func(btx *bolt.Tx) error {
		kvs, err = (&tx{s: s, btx: btx}).List(prefix)
		return err
	})
	return kvs, err
}

func (s *nsStore) Update(ctx context.Context, fn func(sdk.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := &tx{s: s}
	err := s.d.db.Update(func(btx *bolt.Tx) error {
		t.btx = btx
		return fn(t)
	})
	if err == nil {
		s.d.publish(t.events)
	}
	return err
}

func (s *nsStore) Watch(ctx context.Context, prefix string) (<-chan sdk.Event, error) {
	w := &watcher{ns: s.ns, prefix: prefix, ch: make(chan sdk.Event, 256)}
	s.d.mu.Lock()
	s.d.watchers[w] = struct{}{}
	s.d.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.d.mu.Lock()
		delete(s.d.watchers, w)
		close(w.ch)
		s.d.mu.Unlock()
	}()
	return w.ch, nil
}

type tx struct {
	s      *nsStore
	btx    *bolt.Tx
	events []nsEvent
}

func (t *tx) bucket(create bool) (*bolt.Bucket, error) {
	if b := t.btx.Bucket([]byte(t.s.ns)); b != nil || !create {
		return b, nil
	}
	return t.btx.CreateBucketIfNotExists([]byte(t.s.ns))
}

func (t *tx) Get(key string) ([]byte, error) {
	b, _ := t.bucket(false)
	if b == nil {
		return nil, sdk.ErrNotFound
	}
	v, ok := decode(b.Get([]byte(key)), time.Now())
	if !ok {
		return nil, sdk.ErrNotFound
	}
	return bytes.Clone(v), nil // bbolt memory is only valid inside the tx
}

func (t *tx) Put(key string, value []byte, opts ...sdk.PutOption) error {
	if key == "" {
		return fmt.Errorf("store: empty key")
	}
	b, err := t.bucket(true)
	if err != nil {
		return err
	}
	o := sdk.ApplyPutOptions(opts)
	if err := b.Put([]byte(key), encode(value, o.TTL)); err != nil {
		return fmt.Errorf("store: put %q: %w", key, err)
	}
	t.events = append(t.events, nsEvent{t.s.ns, sdk.Event{Type: sdk.EventPut, Key: key, Value: bytes.Clone(value)}})
	return nil
}

func (t *tx) Delete(key string) error {
	b, _ := t.bucket(false)
	if b == nil || b.Get([]byte(key)) == nil {
		return nil
	}
	if err := b.Delete([]byte(key)); err != nil {
		return fmt.Errorf("store: delete %q: %w", key, err)
	}
	t.events = append(t.events, nsEvent{t.s.ns, sdk.Event{Type: sdk.EventDelete, Key: key}})
	return nil
}

func (t *tx) List(prefix string) ([]sdk.KV, error) {
	b, _ := t.bucket(false)
	if b == nil {
		return nil, nil
	}
	now := time.Now()
	var out []sdk.KV
	c := b.Cursor()
	p := []byte(prefix)
	for k, raw := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, raw = c.Next() {
		if v, ok := decode(raw, now); ok {
			out = append(out, sdk.KV{Key: string(k), Value: bytes.Clone(v)})
		}
	}
	return out, nil
}
