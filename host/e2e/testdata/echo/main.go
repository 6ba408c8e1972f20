// Command echo is the host's end-to-end test plugin. The tests copy this
// module, edit the build constant (and sometimes more), and build it with
// pcompile.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"example.com/echo/reply"
	"github.com/plugd/plugd/sdk"
)

const build = "build-1"

var Plugin = sdk.Declaration{ABI: sdk.ABIVersion, Name: "echo", Version: "v1", NewAPI: newAPI, NewSLP: newSLP}

func main() {}

type config struct {
	Listen string `yaml:"listen"`
}

type api struct {
	h   sdk.Host
	mux *http.ServeMux
	srv *http.Server
}

func newAPI(h sdk.Host) (sdk.API, error) {
	a := &api{h: h, mux: http.NewServeMux()}
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, reply.Format(build, r.URL.Path))
	})
	a.mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		a.event("slow done " + build)
		fmt.Fprint(w, reply.Format(build, "slow"))
	})
	a.mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) { panic("echo handler panic") })
	a.mux.HandleFunc("/gopanic", func(w http.ResponseWriter, r *http.Request) {
		h.Go("bad", func(ctx context.Context) { panic("echo goroutine panic") })
		fmt.Fprint(w, "started")
	})
	// /register announces an instance of service "echo-svc" in the shared
	// registry; /services lists that service as this build sees it.
	a.mux.HandleFunc("/register", func(w http.ResponseWriter, r *http.Request) {
		err := h.Services().Register(sdk.Instance{Service: "echo-svc", ID: r.URL.Query().Get("id"), Address: "127.0.0.1:1"})
		if err != nil {
			sdk.WriteError(w, sdk.Errorf(http.StatusBadRequest, "%v", err))
			return
		}
		fmt.Fprint(w, "registered")
	})
	a.mux.HandleFunc("/services", func(w http.ResponseWriter, r *http.Request) {
		for _, in := range h.Services().Instances("echo-svc") {
			fmt.Fprintln(w, in.ID)
		}
	})
	// /begin holds a session of the SLP named by ?slp= for ms, as a gateway
	// filter would, so the test can see it counted.
	a.mux.HandleFunc("/begin", func(w http.ResponseWriter, r *http.Request) {
		s, err := h.SLPs().Begin(r.URL.Query().Get("slp"))
		if err != nil {
			sdk.WriteError(w, sdk.Errorf(http.StatusNotFound, "%v", err))
			return
		}
		defer s.End()
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		time.Sleep(time.Duration(ms) * time.Millisecond)
		fmt.Fprint(w, "session ended")
	})
	// /poll waits until the request is canceled or, with ?polite=1, until
	// the instance starts draining, like a long poll or a log follow.
	a.mux.HandleFunc("/poll", func(w http.ResponseWriter, r *http.Request) {
		draining := h.Draining()
		if r.URL.Query().Get("polite") == "" {
			draining = nil
		}
		select {
		case <-draining:
			fmt.Fprint(w, "poll ended: draining")
		case <-r.Context().Done():
			fmt.Fprint(w, "poll ended: canceled")
		case <-time.After(time.Minute):
			fmt.Fprint(w, "poll ended: timeout")
		}
	})
	a.mux.HandleFunc("/store", func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			h.Store().Put(r.Context(), "k", []byte(r.URL.Query().Get("v")))
		}
		v, err := h.Store().Get(r.Context(), "k")
		if err != nil {
			sdk.WriteError(w, sdk.Errorf(http.StatusNotFound, "%v", err))
			return
		}
		w.Write(v)
	})
	return a, nil
}

func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// Start serves build on the configured port through a host-owned listener.
func (a *api) Start(ctx context.Context) error {
	if build == "hang-start" { // TestHooksThatHang: ignores ctx
		select {}
	}
	var cfg config
	if err := a.h.Config(&cfg); err != nil {
		return err
	}
	if cfg.Listen == "" {
		return nil
	}
	ln, err := a.h.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, reply.Format(build, "data"))
	})}
	a.h.Go("serve", func(context.Context) { a.srv.Serve(ln) })
	return nil
}

func (a *api) Stop(ctx context.Context) error {
	a.event("stop " + build + " " + sdk.StopReasonFrom(ctx).String())
	if build == "hang-stop" { // TestHooksThatHang: ignores ctx
		select {}
	}
	if a.srv != nil {
		return a.srv.Shutdown(ctx)
	}
	return nil
}

// event appends a line to a file in the data dir, so the test can see the
// order of things across versions.
func (a *api) event(s string) {
	f, err := os.OpenFile(filepath.Join(a.h.DataDir(), "events.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, s)
}

type slp struct{}

func newSLP(h sdk.Host) (sdk.SLP, error) { return slp{}, nil }

func (slp) ServeStream(ctx context.Context, st sdk.Stream) error {
	for {
		msg, err := st.Read(ctx)
		if err != nil {
			return nil
		}
		if err := st.Write(ctx, []byte(reply.Format(build, string(msg)))); err != nil {
			return err
		}
	}
}
