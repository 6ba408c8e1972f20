package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"

	"github.com/coder/websocket"
	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// session serves GET /slp/v1/<slp>: one WebSocket connection is one session
// of the SLP version current when it was accepted.
func (s *Server) session(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	sess, err := s.Manager.Begin(name)
	if err != nil {
		fail(w, r, sdk.Errorf(http.StatusNotFound, "no SLP named %q is loaded", name))
		return
	}
	defer sess.End()
	h, ok := sess.SLP().(sdk.StreamHandler)
	if !ok {
		fail(w, r, sdk.Errorf(http.StatusNotImplemented, "SLP %s does not serve streams (it has no ServeStream)", name))
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered the client
	}
	defer c.CloseNow()
	log := s.Log.WithFields(logrus.Fields{"slp": name, "load": sess.Version()})
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var expired <-chan struct{} // nil: never
	if e, ok := sess.(interface{ Expired() <-chan struct{} }); ok {
		expired = e.Expired()
	}
	go func() {
		select {
		case <-expired:
			// The version was replaced or unloaded and its drain time is up:
			// say so in a close frame first (canceling the stream's context
			// would drop the connection without one), then end ServeStream.
			c.Close(websocket.StatusGoingAway, "this version of the SLP was replaced or unloaded; reconnect")
			cancel()
		case <-ctx.Done():
		}
	}()
	err = serveStream(ctx, h, &stream{c: c, r: r})
	select {
	case <-expired:
		return
	default:
	}
	switch {
	case err == nil, errors.Is(err, context.Canceled), websocket.CloseStatus(err) != -1:
		c.Close(websocket.StatusNormalClosure, "")
	default:
		log.WithError(err).Warn("session ended with an error")
		c.Close(websocket.StatusInternalError, "session failed")
	}
}

func serveStream(ctx context.Context, h sdk.StreamHandler, st sdk.Stream) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("SLP panicked (recovered): %v\n%s", p, debug.Stack())
		}
	}()
	return h.ServeStream(ctx, st)
}

type stream struct {
	c *websocket.Conn
	r *http.Request
}

func (s *stream) Read(ctx context.Context) ([]byte, error) {
	_, data, err := s.c.Read(ctx)
	return data, err
}

func (s *stream) Write(ctx context.Context, msg []byte) error {
	return s.c.Write(ctx, websocket.MessageText, msg)
}

func (s *stream) Request() *http.Request { return s.r }
