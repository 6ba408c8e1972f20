package program

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkEval measures one request's run of the benchmark script's
// one-line program (reset, evaluation, clear).
func BenchmarkEval(b *testing.B) {
	p, err := Compile(Spec{Name: "one-line", Expr: base64.StdEncoding.EncodeToString([]byte(`request.method in ["GET", "HEAD"]`))})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/svc/x", nil)
	env := NewEnv(nil)
	g := map[string]any{}
	b.ReportAllocs()
	for b.Loop() {
		env.Reset(r, "127.0.0.1", Upstream{Service: "svc", Instances: 1, Available: 1}, g)
		if reason := p.Eval(env); reason != "" {
			b.Fatal(reason)
		}
		env.Clear()
	}
}
