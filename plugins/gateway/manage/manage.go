// Package manage is the gateway's HTTP API on the host's management
// listener: the seed's management endpoints (same paths, bodies and
// {"message","code","data"} envelope), the registry API and metrics.
package manage

import (
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/plugins/gateway/control"
	"github.com/plugd/plugd/plugins/gateway/program"
	"github.com/plugd/plugd/sdk"
)

// API serves the management endpoints.
type API struct {
	c *control.Control
	// pwHash is md5(md5(password)) in lower-case hex; empty: no auth.
	pwHash string
	mux    map[string]map[string]http.HandlerFunc // path -> method -> handler
}

// New builds the API. passwordHash is gateway.management.password.
func New(c *control.Control, passwordHash string) *API {
	a := &API{c: c, pwHash: strings.ToLower(strings.TrimSpace(passwordHash))}
	a.mux = map[string]map[string]http.HandlerFunc{
		"/management/config": {"GET": a.getConfig},
		"/management/config/load_balance": {"PUT": putSection(a, validStrategy,
			func(c *conf.Service, v conf.LoadBalance) { c.LoadBalance = v })},
		"/management/config/rate_limiter": {"PUT": putSection(a, nil,
			func(c *conf.Service, v conf.RateLimiter) { c.RateLimiter = v })},
		"/management/config/breaker": {"PUT": putSection(a, nil,
			func(c *conf.Service, v conf.Breaker) { c.Breaker = v })},
		"/management/config/reverse_proxy": {"PUT": putSection(a, nil,
			func(c *conf.Service, v conf.ReverseProxy) { c.ReverseProxy = v })},
		"/management/config/slp": {"PUT": putSection(a, nil,
			func(c *conf.Service, v slpConfig) { c.SLP = v.Name })},
		"/management/program/variable":       {"GET": a.getVars, "PUT": a.putVar, "DELETE": a.delVar},
		"/management/program/info":           {"GET": a.getPrograms, "PUT": a.putProgram, "DELETE": a.delProgram},
		"/management/upstream/service/names": {"GET": a.names},
		"/management/upstream/service/state": {"GET": a.state},
		"/registry/instances":                {"GET": a.listInstances},
		"/registry/instance":                 {"PUT": a.register, "POST": a.register, "DELETE": a.deregister},
		"/registry/heartbeat":                {"PUT": a.heartbeat, "POST": a.heartbeat},
	}
	return a
}

// envelope is the seed's response shape.
type envelope struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
	Data    any    `json:"data,omitempty"`
}

func ok(w http.ResponseWriter, data any) {
	sdk.WriteJSON(w, http.StatusOK, envelope{Message: "success", Code: 0, Data: data})
}

// fail answers an error in the envelope; code is the HTTP status.
func fail(w http.ResponseWriter, status int, format string, args ...any) {
	sdk.WriteJSON(w, status, envelope{Message: fmt.Sprintf(format, args...), Code: status})
}

func failErr(w http.ResponseWriter, err error, service string) {
	var br *control.BadRequest
	switch {
	case errors.Is(err, control.ErrUnknownService):
		fail(w, http.StatusNotFound, "unknown service %q", service)
	case errors.As(err, &br):
		fail(w, http.StatusBadRequest, "%v", br.Err)
	default:
		fail(w, sdk.StatusOf(err), "%v", err)
	}
}

// ServeHTTP routes a request; the host has stripped /gateway/v1.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" && r.Method == http.MethodGet {
		// the metrics name every service and instance: same password
		if !a.authorized(r) {
			fail(w, http.StatusUnauthorized, "unauthorized: the Authorization header must be md5(password)")
			return
		}
		a.c.GW.Metrics().ServeHTTP(w, r)
		return
	}
	methods, found := a.mux[strings.TrimSuffix(r.URL.Path, "/")]
	if !found {
		fail(w, http.StatusNotFound, "no endpoint %s", r.URL.Path)
		return
	}
	h, found := methods[r.Method]
	if !found {
		allow := make([]string, 0, len(methods))
		for m := range methods {
			allow = append(allow, m)
		}
		w.Header().Set("Allow", strings.Join(allow, ", "))
		fail(w, http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, r.URL.Path)
		return
	}
	if !a.authorized(r) {
		fail(w, http.StatusUnauthorized, "unauthorized: the Authorization header must be md5(password)")
		return
	}
	h(w, r)
}

// authorized checks Authorization = md5(password) against the configured
// md5(md5(password)), in constant time. "Bearer <md5(password)>" is taken
// too: it is what Prometheus can send (its scrape configs may not set an
// Authorization header of their own, only credentials with a type).
func (a *API) authorized(r *http.Request) bool {
	if a.pwHash == "" {
		return true
	}
	got := strings.TrimSpace(r.Header.Get("Authorization"))
	if len(got) > 7 && strings.EqualFold(got[:7], "bearer ") {
		got = strings.TrimSpace(got[7:])
	}
	got = strings.ToLower(got)
	sum := md5.Sum([]byte(got))
	want, err := hex.DecodeString(a.pwHash)
	if err != nil || len(want) != len(sum) {
		return false
	}
	return subtle.ConstantTimeCompare(sum[:], want) == 1
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := sdk.DecodeJSON(r, v, 0); err != nil {
		fail(w, sdk.StatusOf(err), "%v", err)
		return false
	}
	return true
}

func (a *API) getConfig(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("service_name")
	cfg, def, err := a.c.Config(name)
	if err != nil {
		failErr(w, err, name)
		return
	}
	ok(w, map[string]any{"default": def, "config": cfg})
}

func needService(w http.ResponseWriter, name string) bool {
	if name == "" {
		fail(w, http.StatusBadRequest, "service_name is required")
		return false
	}
	if !conf.ValidName(name) {
		fail(w, http.StatusBadRequest, "invalid service_name %q", name)
		return false
	}
	return true
}

func (a *API) update(w http.ResponseWriter, r *http.Request, name string, edit func(*conf.Service)) {
	if !needService(w, name) {
		return
	}
	if err := a.c.UpdateConfig(r.Context(), name, edit); err != nil {
		failErr(w, err, name)
		return
	}
	ok(w, nil)
}

// putSection returns the handler of a PUT /management/config/<section>
// body {"service_name": ..., "config": <T>}: the config is required,
// checked by valid (nil: any) and stored into the service's config by set.
func putSection[T any](a *API, valid func(*T) error, set func(*conf.Service, T)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ServiceName string `json:"service_name"`
			Config      *T     `json:"config"`
		}
		if !decode(w, r, &body) {
			return
		}
		if body.Config == nil {
			fail(w, http.StatusBadRequest, "config is required")
			return
		}
		if valid != nil {
			if err := valid(body.Config); err != nil {
				fail(w, http.StatusBadRequest, "%v", err)
				return
			}
		}
		a.update(w, r, body.ServiceName, func(c *conf.Service) { set(c, *body.Config) })
	}
}

func validStrategy(lb *conf.LoadBalance) error {
	if lb.Strategy == "" {
		return errors.New("config.strategy is required")
	}
	_, err := conf.NormalizeStrategy(lb.Strategy)
	return err
}

// slpConfig is the body of PUT /management/config/slp.
type slpConfig struct {
	Name string `json:"name"`
}

func (a *API) getVars(w http.ResponseWriter, r *http.Request) { ok(w, a.c.Variables()) }

var keyOK = func(k string) bool { return k != "" && len(k) <= 256 && !strings.ContainsAny(k, "\x00") }

func (a *API) putVar(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	}
	if !decode(w, r, &body) {
		return
	}
	if !keyOK(body.Key) {
		fail(w, http.StatusBadRequest, "key is required (at most 256 bytes)")
		return
	}
	if err := a.c.SetVariable(r.Context(), body.Key, body.Value); err != nil {
		failErr(w, err, "")
		return
	}
	ok(w, nil)
}

func (a *API) delVar(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if key == "" {
		fail(w, http.StatusBadRequest, "query parameter key is required")
		return
	}
	found, err := a.c.DeleteVariable(r.Context(), key)
	if err != nil {
		failErr(w, err, "")
		return
	}
	if !found {
		fail(w, http.StatusNotFound, "no variable %q", key)
		return
	}
	ok(w, nil)
}

func (a *API) getPrograms(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("service_name")
	progs, err := a.c.Programs(name)
	if err != nil {
		failErr(w, err, name)
		return
	}
	ok(w, progs)
}

func (a *API) putProgram(w http.ResponseWriter, r *http.Request) {
	var sp program.Spec
	if !decode(w, r, &sp) {
		return
	}
	if !needService(w, sp.ServiceName) {
		return
	}
	if !conf.ValidName(sp.Name) {
		fail(w, http.StatusBadRequest, "invalid program name %q", sp.Name)
		return
	}
	if err := a.c.SetProgram(r.Context(), sp); err != nil {
		failErr(w, err, sp.ServiceName)
		return
	}
	ok(w, nil)
}

func (a *API) delProgram(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	svc, name := q.Get("service_name"), q.Get("name")
	if !needService(w, svc) {
		return
	}
	n, err := a.c.DeletePrograms(r.Context(), svc, name)
	if err != nil {
		failErr(w, err, svc)
		return
	}
	if n == 0 {
		if name != "" {
			fail(w, http.StatusNotFound, "no program %q of service %q", name, svc)
		} else {
			fail(w, http.StatusNotFound, "service %q has no programs", svc)
		}
		return
	}
	ok(w, nil)
}

func (a *API) names(w http.ResponseWriter, r *http.Request) { ok(w, a.c.Names()) }

func (a *API) state(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("service_name")
	if name == "" {
		fail(w, http.StatusBadRequest, "query parameter service_name is required")
		return
	}
	st, err := a.c.State(name)
	if err != nil {
		failErr(w, err, name)
		return
	}
	ok(w, st)
}

// instanceBody is a registration.
type instanceBody struct {
	ServiceName string            `json:"service_name"`
	ID          string            `json:"id"`
	Hostname    string            `json:"hostname"`
	Address     string            `json:"address"`
	Weight      int               `json:"weight"`
	Metadata    map[string]string `json:"metadata"`
	// TTL ("30s"): the instance expires unless heartbeats renew it.
	TTL string `json:"ttl"`
}

func (a *API) register(w http.ResponseWriter, r *http.Request) {
	var b instanceBody
	if !decode(w, r, &b) {
		return
	}
	if !needService(w, b.ServiceName) {
		return
	}
	if b.ID == "" || b.Address == "" {
		fail(w, http.StatusBadRequest, "id and address are required")
		return
	}
	if b.Weight < 0 {
		fail(w, http.StatusBadRequest, "weight must not be negative")
		return
	}
	ttl, err := conf.Duration("ttl", b.TTL, 0)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	inst := sdk.Instance{ID: b.ID, Service: b.ServiceName, Hostname: b.Hostname, Address: b.Address,
		Weight: b.Weight, Metadata: b.Metadata, TTL: ttl}
	if err := a.c.Registry().Register(inst); err != nil {
		fail(w, http.StatusBadRequest, "register: %v", err)
		return
	}
	a.c.SyncRegistry()
	ok(w, nil)
}

func (a *API) heartbeat(w http.ResponseWriter, r *http.Request) {
	var b struct {
		ServiceName string `json:"service_name"`
		ID          string `json:"id"`
	}
	if !decode(w, r, &b) {
		return
	}
	if err := a.c.Registry().Heartbeat(b.ServiceName, b.ID); err != nil {
		if errors.Is(err, sdk.ErrUnknownInstance) {
			fail(w, http.StatusNotFound, "no instance %q of service %q", b.ID, b.ServiceName)
			return
		}
		fail(w, http.StatusInternalServerError, "heartbeat: %v", err)
		return
	}
	ok(w, map[string]any{"renewed_at": time.Now().UTC().Format(time.RFC3339Nano)})
}

func (a *API) deregister(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	svc, id := q.Get("service_name"), q.Get("id")
	if svc == "" || id == "" {
		fail(w, http.StatusBadRequest, "query parameters service_name and id are required")
		return
	}
	if err := a.c.Registry().Deregister(svc, id); err != nil {
		fail(w, http.StatusInternalServerError, "deregister: %v", err)
		return
	}
	a.c.SyncRegistry()
	ok(w, nil)
}

func (a *API) listInstances(w http.ResponseWriter, r *http.Request) {
	svc := r.URL.Query().Get("service_name")
	if svc == "" {
		fail(w, http.StatusBadRequest, "query parameter service_name is required")
		return
	}
	insts := a.c.Registry().Instances(svc)
	if insts == nil {
		insts = []sdk.Instance{}
	}
	ok(w, insts)
}
