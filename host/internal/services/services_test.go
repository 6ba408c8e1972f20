package services

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/plugd/plugd/sdk"
)

func TestRegisterTTLHeartbeatWatch(t *testing.T) {
	r := New()
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := r.Watch(ctx)

	if err := r.Owned("deploy").Register(sdk.Instance{Service: "web", ID: "b", Address: "127.0.0.1:1", TTL: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(sdk.Instance{Service: "web", ID: "a", Address: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(sdk.Instance{Service: "web", ID: "c", Address: "nope"}); err == nil {
		t.Fatal("bad address accepted")
	}
	select {
	case <-w:
	default:
		t.Fatal("no watch signal")
	}
	got := r.Instances("web")
	if len(got) != 2 || got[0].ID != "a" || got[1].Owner != "deploy" || got[0].Weight != 1 {
		t.Fatalf("instances = %+v", got)
	}
	now = now.Add(8 * time.Second)
	if err := r.Heartbeat("web", "b"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(8 * time.Second)
	if len(r.Instances("web")) != 2 {
		t.Fatal("heartbeat did not renew")
	}
	now = now.Add(3 * time.Second)
	if len(r.Instances("web")) != 1 {
		t.Fatal("TTL instance did not expire")
	}
	if err := r.Heartbeat("web", "b"); !errors.Is(err, sdk.ErrUnknownInstance) {
		t.Fatalf("heartbeat of expired = %v", err)
	}
	r.Expire()
	r.Deregister("web", "a")
	if s := r.Services(); len(s) != 0 {
		t.Fatalf("services = %v", s)
	}
}

func TestRemoveOwnerKeepsOthers(t *testing.T) {
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := r.Watch(ctx)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(r.Owned("deploy.v1").Register(sdk.Instance{Service: "web", ID: "d1", Address: "127.0.0.1:1"}))
	must(r.Owned("deploy.v1").Register(sdk.Instance{Service: "api", ID: "d2", Address: "127.0.0.1:2"}))
	must(r.Owned("gateway.v1").Register(sdk.Instance{Service: "web", ID: "g1", Address: "127.0.0.1:3"}))
	<-w
	if n := r.RemoveOwner("deploy.v1"); n != 2 {
		t.Fatalf("removed %d, want 2", n)
	}
	select {
	case <-w:
	case <-time.After(time.Second):
		t.Fatal("watchers not told of the removal")
	}
	if got := r.Instances("web"); len(got) != 1 || got[0].ID != "g1" {
		t.Fatalf("web after removal: %+v", got)
	}
	if got := r.Instances("api"); len(got) != 0 {
		t.Fatalf("api after removal: %+v", got)
	}
	if n := r.RemoveOwner("deploy.v1"); n != 0 {
		t.Fatalf("second removal removed %d", n)
	}
}
