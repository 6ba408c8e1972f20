// Package room keeps chat rooms and their messages in the plugin's store,
// so that the API and the SLP sessions (and every version of either) see
// the same rooms.
package room

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/plugd/plugd/sdk"
)

// Message is one chat message.
type Message struct {
	Seq  int64     `json:"seq"`
	Room string    `json:"room"`
	User string    `json:"user"`
	Text string    `json:"text"`
	Time time.Time `json:"time"`
}

// Room is a room and how many messages it holds.
type Room struct {
	Name     string    `json:"name"`
	Messages int64     `json:"messages"`
	Created  time.Time `json:"created"`
}

// Rooms is the shared state.
type Rooms struct{ Store sdk.Store }

const maxText = 4096

// ValidName reports whether s can name a room.
func ValidName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func roomKey(name string) string           { return "room/" + name }
func msgPrefix(room string) string         { return "msg/" + room + "/" }
func msgKey(room string, seq int64) string { return fmt.Sprintf("%s%012d", msgPrefix(room), seq) }

// Post appends a message and returns it with its sequence number.
func (rs Rooms) Post(ctx context.Context, roomName, user, text string) (Message, error) {
	switch {
	case !ValidName(roomName):
		return Message{}, sdk.Errorf(http.StatusBadRequest, "room %q: want 1-64 letters, digits, - or _", roomName)
	case strings.TrimSpace(user) == "":
		return Message{}, sdk.Errorf(http.StatusBadRequest, "user is required")
	case strings.TrimSpace(text) == "":
		return Message{}, sdk.Errorf(http.StatusBadRequest, "text is required")
	case len(text) > maxText:
		return Message{}, sdk.Errorf(http.StatusRequestEntityTooLarge, "text longer than %d bytes", maxText)
	}
	m := Message{Room: roomName, User: user, Text: text, Time: time.Now().UTC()}
	err := rs.Store.Update(ctx, func(tx sdk.Tx) error {
		r := Room{Name: roomName, Created: m.Time}
		raw, err := tx.Get(roomKey(roomName))
		if err == nil {
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("room %s record: %w", roomName, err)
			}
		} else if !errors.Is(err, sdk.ErrNotFound) {
			return err
		}
		r.Messages++
		m.Seq = r.Messages
		rb, _ := json.Marshal(r)
		mb, _ := json.Marshal(m)
		if err := tx.Put(roomKey(roomName), rb); err != nil {
			return err
		}
		return tx.Put(msgKey(roomName, m.Seq), mb)
	})
	return m, err
}

// List returns every room, by name.
func (rs Rooms) List(ctx context.Context) ([]Room, error) {
	kvs, err := rs.Store.List(ctx, "room/")
	if err != nil {
		return nil, err
	}
	out := make([]Room, 0, len(kvs))
	for _, kv := range kvs {
		var r Room
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Messages returns the messages of a room with Seq > since.
func (rs Rooms) Messages(ctx context.Context, roomName string, since int64) ([]Message, error) {
	if !ValidName(roomName) {
		return nil, sdk.Errorf(http.StatusBadRequest, "room %q: want 1-64 letters, digits, - or _", roomName)
	}
	if _, err := rs.Store.Get(ctx, roomKey(roomName)); errors.Is(err, sdk.ErrNotFound) {
		return nil, sdk.Errorf(http.StatusNotFound, "no room %q", roomName)
	}
	kvs, err := rs.Store.List(ctx, msgPrefix(roomName))
	if err != nil {
		return nil, err
	}
	out := []Message{}
	for _, kv := range kvs {
		seq, _ := strconv.ParseInt(strings.TrimPrefix(kv.Key, msgPrefix(roomName)), 10, 64)
		if seq <= since {
			continue
		}
		var m Message
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", kv.Key, err)
		}
		out = append(out, m)
	}
	return out, nil
}

// Follow delivers new messages of a room until ctx ends.
func (rs Rooms) Follow(ctx context.Context, roomName string) (<-chan Message, error) {
	events, err := rs.Store.Watch(ctx, msgPrefix(roomName))
	if err != nil {
		return nil, err
	}
	out := make(chan Message, 16)
	go func() {
		defer close(out)
		for ev := range events {
			var m Message
			if ev.Type != sdk.EventPut || json.Unmarshal(ev.Value, &m) != nil {
				continue
			}
			select {
			case out <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
