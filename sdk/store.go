package sdk

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned by Store.Get for a missing or expired key.
var ErrNotFound = errors.New("sdk: key not found")

// Store is a persistent key-value store, namespaced per plugin and kept
// across swaps and host restarts. Keys are ordered byte-wise, so a prefix
// such as "room/" lists one kind of record. The default backend is embedded
// (bbolt in the data dir); the interface is shaped so that a backend shared
// by several hosts (etcd) can implement it too.
type Store interface {
	// Get returns the value of key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put sets key to value. With a TTL option the key expires after it.
	Put(ctx context.Context, key string, value []byte, opts ...PutOption) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the live pairs whose key starts with prefix, in key order.
	List(ctx context.Context, prefix string) ([]KV, error)
	// Update runs fn atomically against the store: a read-modify-write
	// of several keys is seen all or nothing.
	Update(ctx context.Context, fn func(tx Tx) error) error
	// Watch delivers changes to keys starting with prefix until ctx ends.
	// Slow readers miss events rather than block writers; the channel is
	// closed when ctx ends.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
}

// Tx is the view of the store inside Store.Update.
type Tx interface {
	Get(key string) ([]byte, error)
	Put(key string, value []byte, opts ...PutOption) error
	Delete(key string) error
	List(prefix string) ([]KV, error)
}

// KV is one key and its value.
type KV struct {
	Key   string
	Value []byte
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change seen by Store.Watch.
type Event struct {
	Type  EventType
	Key   string
	Value []byte // nil for EventDelete
}

// PutOption changes how Put stores a value.
type PutOption func(*PutOptions)

// PutOptions is the result of applying PutOption values; backends read it.
type PutOptions struct {
	TTL time.Duration
}

// WithTTL makes the key expire after d.
func WithTTL(d time.Duration) PutOption { return func(o *PutOptions) { o.TTL = d } }

// ApplyPutOptions folds opts into a PutOptions; for store backends.
func ApplyPutOptions(opts []PutOption) PutOptions {
	var o PutOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}
