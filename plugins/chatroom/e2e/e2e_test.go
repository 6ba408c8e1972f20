// Package e2e runs the chatroom example in the real plugd: its API and its
// SLP share rooms through the store, across swaps of either.
package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/plugd/plugd/internal/testhost"
)

type message struct {
	Seq  int64  `json:"seq"`
	Room string `json:"room"`
	User string `json:"user"`
	Text string `json:"text"`
}

func TestChatroomAPIAndSLP(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	f1 := h.Compile(t, "plugins/chatroom")
	f2 := h.Compile(t, "plugins/chatroom")
	h.LoadAPI(t, "chatroom.v1", f1)
	h.LoadSLP(t, "chatroom", f1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if code, body := h.Do(t, "GET", "/chatroom/v1/rooms", nil); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("rooms at start: %d %q", code, body)
	}
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.URL, "http")+"/slp/v1/chatroom?room=lobby&user=bob", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	read := func() map[string]any {
		t.Helper()
		_, b, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return v
	}
	if hello := read(); hello["joined"] != "lobby" || hello["user"] != "bob" {
		t.Fatalf("hello: %v", hello)
	}

	// A post through the API reaches the session.
	if code, body := h.Do(t, "POST", "/chatroom/v1/rooms/lobby/messages", strings.NewReader(`{"user":"ann","text":"hi bob"}`)); code != 201 {
		t.Fatalf("post: %d %s", code, body)
	}
	if m := read(); m["user"] != "ann" || m["text"] != "hi bob" {
		t.Fatalf("session got %v", m)
	}
	// A text sent on the session is posted to the room.
	if err := ws.Write(ctx, websocket.MessageText, []byte("hi ann")); err != nil {
		t.Fatal(err)
	}
	if m := read(); m["user"] != "bob" || m["text"] != "hi ann" {
		t.Fatalf("echo of own message: %v", m)
	}

	// Swap both; the rooms stay, the old session keeps working.
	h.LoadAPI(t, "chatroom.v1", f2)
	h.LoadSLP(t, "chatroom", f2)
	code, body := h.Do(t, "GET", "/chatroom/v1/rooms/lobby/messages?since=0", nil)
	var msgs []message
	if err := json.Unmarshal([]byte(body), &msgs); code != 200 || err != nil {
		t.Fatalf("messages after swap: %d %s", code, body)
	}
	if len(msgs) != 2 || msgs[0].Text != "hi bob" || msgs[1].Text != "hi ann" || msgs[1].Seq != 2 {
		t.Fatalf("messages after swap: %+v", msgs)
	}
	if code, _ := h.Do(t, "POST", "/chatroom/v1/rooms/lobby/messages", strings.NewReader(`{"user":"ann","text":"after swap"}`)); code != 201 {
		t.Fatalf("post after swap: %d", code)
	}
	if m := read(); m["text"] != "after swap" {
		t.Fatalf("old session after swap got %v", m)
	}
	_, slps := h.Do(t, "GET", "/slpm/v1/slps", nil)
	if !strings.Contains(slps, "chatroom\t0\t1\t"+f1) || !strings.Contains(slps, "draining") {
		t.Fatalf("old SLP version not draining with its session:\n%s", slps)
	}
}

func TestChatroomRefusesBadInput(t *testing.T) {
	h := testhost.Start(t, testhost.Options{})
	h.LoadAPI(t, "chatroom.v1", h.Compile(t, "plugins/chatroom"))
	cases := []struct {
		method, path, body string
		status             int
		want               string
	}{
		{"POST", "/chatroom/v1/rooms/lobby/messages", `{"user":"ann"`, 400, "JSON"},
		{"POST", "/chatroom/v1/rooms/lobby/messages", `{"user":"ann","text":"x","extra":1}`, 400, "extra"},
		{"POST", "/chatroom/v1/rooms/lobby/messages", `{"user":"ann","text":""}`, 400, "text is required"},
		{"POST", "/chatroom/v1/rooms/lobby/messages", `{"user":"ann","text":"` + strings.Repeat("x", 5000) + `"}`, 413, "longer than"},
		{"POST", "/chatroom/v1/rooms/lobby/messages", `{"user":"ann","text":"` + strings.Repeat("x", 20000) + `"}`, 413, ""},
		{"POST", "/chatroom/v1/rooms/a.b/messages", `{"user":"ann","text":"x"}`, 400, "want 1-64"},
		{"GET", "/chatroom/v1/rooms/nosuch/messages", "", 404, "no room"},
		{"GET", "/chatroom/v1/rooms/lobby/messages?since=-1", "", 400, "since"},
		{"GET", "/chatroom/v1/nosuch", "", 404, "no route"},
	}
	for _, c := range cases {
		code, body := h.Do(t, c.method, c.path, strings.NewReader(c.body))
		if code != c.status || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %d %s, want %d containing %q", c.method, c.path, code, body, c.status, c.want)
		}
	}
	if code, body := h.Do(t, "GET", "/chatroom/v1/rooms", nil); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("refused posts left rooms: %d %s", code, body)
	}
}
