package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/plugd/plugd/plugins/gateway/conf"
	"github.com/plugd/plugd/sdk"
)

type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkServeHTTP measures the gateway's own work per proxied request
// (routing, limiter check, balancer, breaker, upstream round trip over a
// kept-alive connection) without an inbound server.
func BenchmarkServeHTTP(b *testing.B) {
	body := []byte("hello from upstream\n")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer up.Close()
	g := New(Options{})
	cfg := conf.Default()
	if err := g.SetConfig("svc", cfg, true); err != nil {
		b.Fatal(err)
	}
	if err := g.SetInstances("svc", []sdk.Instance{{ID: "u", Address: strings.TrimPrefix(up.URL, "http://")}}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			r := httptest.NewRequest("GET", "/svc/x", nil)
			r.RemoteAddr = "127.0.0.1:1234"
			for k := range w.h {
				delete(w.h, k)
			}
			g.ServeHTTP(w, r)
		}
	})
}
