package room

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/plugd/plugd/sdk"
	"github.com/plugd/plugd/sdk/sdktest"
)

func TestPostListMessages(t *testing.T) {
	ctx := context.Background()
	rs := Rooms{Store: sdktest.NewStore()}
	for i, text := range []string{"one", "two", "three"} {
		m, err := rs.Post(ctx, "lobby", "ann", text)
		if err != nil {
			t.Fatal(err)
		}
		if m.Seq != int64(i+1) || m.Room != "lobby" || m.User != "ann" || m.Text != text || m.Time.IsZero() {
			t.Fatalf("post %d: %+v", i, m)
		}
	}
	if _, err := rs.Post(ctx, "dev", "bob", "hi"); err != nil {
		t.Fatal(err)
	}
	rooms, err := rs.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rooms) != 2 || rooms[0].Name != "dev" || rooms[0].Messages != 1 || rooms[1].Name != "lobby" || rooms[1].Messages != 3 {
		t.Fatalf("rooms: %+v", rooms)
	}
	msgs, err := rs.Messages(ctx, "lobby", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].Text != "two" || msgs[1].Text != "three" {
		t.Fatalf("messages since 1: %+v", msgs)
	}
	if msgs, _ := rs.Messages(ctx, "lobby", 3); len(msgs) != 0 || msgs == nil {
		t.Fatalf("messages since the last: %#v, want an empty list", msgs)
	}
}

func TestPostRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	rs := Rooms{Store: sdktest.NewStore()}
	cases := []struct {
		room, user, text string
		status           int
	}{
		{"", "ann", "hi", http.StatusBadRequest},
		{"../x", "ann", "hi", http.StatusBadRequest},
		{strings.Repeat("r", 65), "ann", "hi", http.StatusBadRequest},
		{"lobby", " ", "hi", http.StatusBadRequest},
		{"lobby", "ann", "", http.StatusBadRequest},
		{"lobby", "ann", strings.Repeat("x", maxText+1), http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		_, err := rs.Post(ctx, c.room, c.user, c.text)
		if sdk.StatusOf(err) != c.status {
			t.Errorf("Post(%q, %q, %d bytes): %v, want status %d", c.room, c.user, len(c.text), err, c.status)
		}
	}
	if rooms, _ := rs.List(ctx); len(rooms) != 0 {
		t.Fatalf("refused posts created rooms: %+v", rooms)
	}
	if _, err := rs.Messages(ctx, "nosuch", 0); sdk.StatusOf(err) != http.StatusNotFound {
		t.Fatalf("messages of an unknown room: %v", err)
	}
}
