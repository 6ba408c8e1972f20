// Package admin is the host's management API (runtime, apim, slpm, the SLP
// WebSocket endpoint) and the dispatcher that serves loaded plugin APIs
// under /<name>/<version>/ on the same listener.
package admin

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/host/internal/plugins"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// Builtins are the host's own APIs, listed with the loaded ones.
var Builtins = []string{"runtime.v1", "apim.v1", "slpm.v1"}

// Server serves the management API.
type Server struct {
	Manager *plugins.Manager
	Log     *logrus.Logger
	// Token, when set, is required as a bearer token on runtime, apim,
	// slpm and slp (the host sets it for non-loopback listen addresses).
	Token string
	// NoAccessLog turns off the one-line-per-request log (log.access: false).
	NoAccessLog bool
}

// Handler returns the full handler: access log, then routes.
func (s *Server) Handler() http.Handler {
	r := httprouter.New()
	r.GET("/runtime/v1/stack", s.auth(s.stack))
	r.GET("/apim/v1/:name", s.auth(s.getAPI))
	r.POST("/apim/v1/:name", s.auth(s.loadAPI))
	r.DELETE("/apim/v1/:name", s.auth(s.unloadAPI))
	r.GET("/slpm/v1/:name", s.auth(s.getSLP))
	r.POST("/slpm/v1/:name", s.auth(s.loadSLP))
	r.DELETE("/slpm/v1/:name", s.auth(s.unloadSLP))
	r.GET("/slp/v1/:name", s.auth(s.session))
	r.NotFound = http.HandlerFunc(s.dispatch)
	r.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		fail(w, req, sdk.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s (allowed: %s)", req.Method, req.URL.Path, w.Header().Get("Allow")))
	})
	r.PanicHandler = func(w http.ResponseWriter, req *http.Request, p any) {
		s.Log.Errorf("panic in %s %s: %v\n%s", req.Method, req.URL.Path, p, debug.Stack())
		fail(w, req, sdk.Errorf(http.StatusInternalServerError, "internal error"))
	}
	if s.NoAccessLog {
		return r
	}
	return s.accessLog(r)
}

func (s *Server) auth(h httprouter.Handle) httprouter.Handle {
	if s.Token == "" {
		return h
	}
	want := []byte("Bearer " + s.Token)
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="plugd"`)
			fail(w, r, sdk.Errorf(http.StatusUnauthorized, "missing or wrong bearer token"))
			return
		}
		h(w, r, ps)
	}
}

func (s *Server) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		s.Log.WithFields(logrus.Fields{
			"method": r.Method, "path": r.URL.Path, "status": rec.status, "bytes": rec.bytes,
			"latency": time.Since(start).String(), "plugin": pluginOf(r.URL.Path), "remote": r.RemoteAddr,
		}).Info("request")
	})
}

// pluginOf names the API a path belongs to: "chatroom.v1", "apim.v1", ...
func pluginOf(path string) string {
	parts := strings.SplitN(strings.TrimPrefix(path, "/"), "/", 3)
	if len(parts) < 2 {
		return ""
	}
	return parts[0] + "." + parts[1]
}

func (s *Server) stack(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	reply(w, r, http.StatusOK, string(buf), map[string]any{"goroutines": runtime.NumGoroutine(), "stack": string(buf)})
}

func (s *Server) getAPI(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	rows := s.Manager.List(plugins.KindAPI)
	if name != "apis" {
		rows = filter(rows, name)
		if len(rows) == 0 && !isBuiltin(name) {
			fail(w, r, sdk.Errorf(http.StatusNotFound, "no API named %q is loaded", name))
			return
		}
	}
	var lines []string
	for _, row := range rows {
		lines = append(lines, strings.Join([]string{row.Name, row.File, string(row.State), fmtTime(row.Time)}, "\t")+errSuffix(row.Error))
	}
	type builtin struct {
		Name  string        `json:"name"`
		State plugins.State `json:"state"`
		Kind  plugins.Kind  `json:"kind"`
	}
	all := []any{}
	for _, row := range rows {
		all = append(all, row)
	}
	for _, b := range Builtins {
		if name == "apis" || name == b {
			lines = append(lines, b)
			all = append(all, builtin{Name: b, State: "builtin", Kind: plugins.KindAPI})
		}
	}
	reply(w, r, http.StatusOK, table("api\t\tfile\t\tstate\t\ttime", lines), all)
}

func (s *Server) getSLP(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	rows := s.Manager.List(plugins.KindSLP)
	if name != "slps" {
		if rows = filter(rows, name); len(rows) == 0 {
			fail(w, r, sdk.Errorf(http.StatusNotFound, "no SLP named %q is loaded", name))
			return
		}
	}
	var lines []string
	for _, row := range rows {
		lines = append(lines, fmt.Sprintf("%s\t%d\t%d\t%s\t%s\t%s%s", row.Name, row.Used, row.Using, row.File, fmtTime(row.Time), row.State, errSuffix(row.Error)))
	}
	if rows == nil {
		rows = []plugins.Row{}
	}
	reply(w, r, http.StatusOK, table("slp\t\tused\t\tusing\t\tfile\t\ttime\t\tstate", lines), rows)
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return "\t" + e
}

func filter(rows []plugins.Row, name string) []plugins.Row {
	var out []plugins.Row
	for _, r := range rows {
		if r.Name == name {
			out = append(out, r)
		}
	}
	return out
}

func isBuiltin(name string) bool {
	for _, b := range Builtins {
		if b == name {
			return true
		}
	}
	return false
}

func (s *Server) loadAPI(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name, file := ps.ByName("name"), r.URL.Query().Get("file")
	if isBuiltin(name) {
		fail(w, r, sdk.Errorf(http.StatusForbidden, "%s is a built-in API and cannot be replaced", name))
		return
	}
	if err := s.Manager.Load(r.Context(), plugins.KindAPI, name, file); err != nil {
		s.Log.WithFields(logrus.Fields{"api": name, "file": file}).WithError(err).Warn("load refused")
		fail(w, r, err)
		return
	}
	reply(w, r, http.StatusOK, fmt.Sprintf("Load API %s %s successd\n", name, file), map[string]string{"result": "loaded", "api": name, "file": file})
}

func (s *Server) unloadAPI(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	if isBuiltin(name) {
		fail(w, r, sdk.Errorf(http.StatusForbidden, "%s is a built-in API and cannot be deleted", name))
		return
	}
	if err := s.Manager.Unload(plugins.KindAPI, name); err != nil {
		fail(w, r, err)
		return
	}
	reply(w, r, http.StatusOK, fmt.Sprintf("Delete API %s successd\n", name), map[string]string{"result": "deleted", "api": name})
}

func (s *Server) loadSLP(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name, file := ps.ByName("name"), r.URL.Query().Get("file")
	if name == "slps" {
		fail(w, r, sdk.Errorf(http.StatusBadRequest, "slps is reserved for the listing"))
		return
	}
	if err := s.Manager.Load(r.Context(), plugins.KindSLP, name, file); err != nil {
		s.Log.WithFields(logrus.Fields{"slp": name, "file": file}).WithError(err).Warn("load refused")
		fail(w, r, err)
		return
	}
	reply(w, r, http.StatusOK, fmt.Sprintf("Load SLP %s %s successd\n", name, file), map[string]string{"result": "loaded", "slp": name, "file": file})
}

func (s *Server) unloadSLP(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	if err := s.Manager.Unload(plugins.KindSLP, name); err != nil {
		fail(w, r, err)
		return
	}
	reply(w, r, http.StatusOK, fmt.Sprintf("Delete SLP %s successd\n", name), map[string]string{"result": "deleted", "slp": name})
}

// dispatch serves /<name>/<version>/... from the loaded API of that name.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) {
	parts := strings.SplitN(strings.TrimPrefix(r.URL.Path, "/"), "/", 3)
	if len(parts) < 2 || parts[0] == "" {
		fail(w, r, sdk.Errorf(http.StatusNotFound, "no route for %s: APIs are served under /<name>/<version>/", r.URL.Path))
		return
	}
	key := parts[0] + "." + parts[1]
	api, release, deadline := s.Manager.API(key)
	if api == nil {
		fail(w, r, sdk.Errorf(http.StatusNotFound, "no API %s is loaded", key))
		return
	}
	defer release()
	rest := "/"
	if len(parts) == 3 {
		rest += parts[2]
	}
	// A request still running when its version's drain time is up is
	// canceled, so that a long poll or follow does not outlive the version.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(deadline, cancel)()
	r2 := r.Clone(ctx)
	r2.Header.Set("X-Plugd-Original-Path", r.URL.Path)
	r2.URL.Path = rest
	r2.URL.RawPath = ""
	s.serveSafely(key, api, w, r2)
}

// serveSafely turns a plugin's panic into a 500 and a logged stack.
func (s *Server) serveSafely(key string, h http.Handler, w http.ResponseWriter, r *http.Request) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler {
			panic(p) // the plugin asked net/http to abort the response
		}
		s.Log.WithField("plugin", key).Errorf("handler panicked (recovered): %v\n%s", p, debug.Stack())
		if rec, ok := w.(*recorder); ok && rec.status != 0 {
			panic(http.ErrAbortHandler) // header already sent: cut the connection
		}
		fail(w, r, sdk.Errorf(http.StatusInternalServerError, "plugin %s failed on this request (panic logged by the host)", key))
	}()
	h.ServeHTTP(w, r)
}
