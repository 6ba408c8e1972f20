package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/plugd/plugd/sdk"
)

func open(t *testing.T) (*DB, string) {
	path := filepath.Join(t.TempDir(), "store.db")
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return d, path
}

func TestNamespacesAreSeparateAndSurviveReopen(t *testing.T) {
	d, path := open(t)
	ctx := context.Background()
	a, b := d.Namespace("a"), d.Namespace("b")
	if err := a.Put(ctx, "k", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "k"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("namespace b sees a's key: %v", err)
	}
	d.Close()
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	v, err := d.Namespace("a").Get(ctx, "k")
	if err != nil || string(v) != "1" {
		t.Fatalf("after reopen got %q, %v", v, err)
	}
}

func TestListTTLUpdateWatch(t *testing.T) {
	d, _ := open(t)
	defer d.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := d.Namespace("p")
	events, _ := s.Watch(ctx, "room/")
	s.Put(ctx, "room/1", []byte("x"))
	s.Put(ctx, "room/2", []byte("y"), sdk.WithTTL(20*time.Millisecond))
	s.Put(ctx, "user/1", []byte("z"))
	kvs, _ := s.List(ctx, "room/")
	if len(kvs) != 2 || kvs[0].Key != "room/1" || kvs[1].Key != "room/2" {
		t.Fatalf("list = %+v", kvs)
	}
	time.Sleep(30 * time.Millisecond)
	if _, err := s.Get(ctx, "room/2"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatalf("expired key still there: %v", err)
	}
	err := s.Update(ctx, func(tx sdk.Tx) error {
		tx.Put("room/3", []byte("w"))
		return errors.New("abort")
	})
	if err == nil {
		t.Fatal("Update error lost")
	}
	if _, err := s.Get(ctx, "room/3"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatal("aborted Update was applied")
	}
	for i, want := range []string{"room/1", "room/2"} {
		select {
		case ev := <-events:
			if ev.Key != want || ev.Type != sdk.EventPut {
				t.Fatalf("event %d = %+v, want put %s", i, ev, want)
			}
		case <-time.After(time.Second):
			t.Fatalf("no event %d", i)
		}
	}
	if err := d.Sweep(); err != nil {
		t.Fatal(err)
	}
}
