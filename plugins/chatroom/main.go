// Command chatroom is the example plugin: an API chatroom.v1 to list rooms
// and post and read messages, and an SLP chatroom whose WebSocket sessions
// join a room and receive its messages. Both share state through the store.
//
//	curl 127.0.0.1:2539/chatroom/v1/rooms
//	curl -XPOST -d '{"user":"ann","text":"hi"}' 127.0.0.1:2539/chatroom/v1/rooms/lobby/messages
//	curl '127.0.0.1:2539/chatroom/v1/rooms/lobby/messages?since=0'
//	websocat 'ws://127.0.0.1:2539/slp/v1/chatroom?room=lobby&user=bob'
package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/plugins/chatroom/room"
	"github.com/plugd/plugd/sdk"
)

// Plugin is the symbol plugd looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "chatroom",
	Version: "v1",
	NewAPI:  newAPI,
	NewSLP:  newSLP,
}

// banner says which build serves; the README's swap walkthrough edits it.
const banner = "chatroom v1"

func main() {}

type api struct {
	http.Handler
	rooms room.Rooms
}

func newAPI(h sdk.Host) (sdk.API, error) {
	a := &api{rooms: room.Rooms{Store: h.Store()}}
	r := httprouter.New()
	r.GET("/", a.info)
	r.GET("/rooms", a.list)
	r.GET("/rooms/:room/messages", a.messages)
	r.POST("/rooms/:room/messages", a.post)
	r.NotFound = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sdk.WriteError(w, sdk.Errorf(http.StatusNotFound, "no route %s %s", r.Method, r.URL.Path))
	})
	a.Handler = r
	return a, nil
}

func (a *api) info(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	sdk.WriteJSON(w, http.StatusOK, map[string]string{"plugin": banner})
}

func (a *api) list(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	rooms, err := a.rooms.List(r.Context())
	if err != nil {
		sdk.WriteError(w, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, rooms)
}

func (a *api) messages(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	since := int64(0)
	if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			sdk.WriteError(w, sdk.Errorf(http.StatusBadRequest, "since=%q: want a non-negative integer", s))
			return
		}
		since = v
	}
	msgs, err := a.rooms.Messages(r.Context(), ps.ByName("room"), since)
	if err != nil {
		sdk.WriteError(w, err)
		return
	}
	sdk.WriteJSON(w, http.StatusOK, msgs)
}

func (a *api) post(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	var in struct {
		User string `json:"user"`
		Text string `json:"text"`
	}
	if err := sdk.DecodeJSON(r, &in, 16<<10); err != nil {
		sdk.WriteError(w, err)
		return
	}
	m, err := a.rooms.Post(r.Context(), ps.ByName("room"), in.User, in.Text)
	if err != nil {
		sdk.WriteError(w, err)
		return
	}
	sdk.WriteJSON(w, http.StatusCreated, m)
}

type slp struct{ rooms room.Rooms }

func newSLP(h sdk.Host) (sdk.SLP, error) { return &slp{rooms: room.Rooms{Store: h.Store()}}, nil }

// ServeStream joins the room named by ?room= as ?user=: it sends the room's
// new messages as JSON and posts every text message it receives.
func (s *slp) ServeStream(ctx context.Context, st sdk.Stream) error {
	q := st.Request().URL.Query()
	roomName, user := q.Get("room"), q.Get("user")
	if !room.ValidName(roomName) || user == "" {
		return st.Write(ctx, []byte(`{"error":"connect with ?room=<name>&user=<name>"}`))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, err := s.rooms.Follow(ctx, roomName)
	if err != nil {
		return err
	}
	hello, _ := json.Marshal(map[string]string{"joined": roomName, "user": user, "by": banner})
	if err := st.Write(ctx, hello); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { // reader: the session ends when the client goes
		for {
			text, err := st.Read(ctx)
			if err != nil {
				errc <- err
				return
			}
			if _, err := s.rooms.Post(ctx, roomName, user, string(text)); err != nil {
				b, _ := json.Marshal(map[string]string{"error": err.Error()})
				if st.Write(ctx, b) != nil {
					errc <- err
					return
				}
			}
		}
	}()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			b, _ := json.Marshal(m)
			if err := st.Write(ctx, b); err != nil {
				return err
			}
		case err := <-errc:
			return err
		}
	}
}
