package program

import (
	"encoding/base64"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
)

func spec(src string) Spec {
	return Spec{Name: "p", ServiceName: "svc", Expr: base64.StdEncoding.EncodeToString([]byte(src))}
}

func TestAcceptAndReject(t *testing.T) {
	src := `request.method in ["GET", "POST"]
# a comment
terminate_if(get_header("X-Block") == "1", "blocked by header")
global.limit == nil || request.content_length <= global.limit
set_header("X-From-Program", upstream.service)
query("debug") == "" ? true : "debug not allowed"`
	p, err := Compile(spec(src))
	if err != nil {
		t.Fatal(err)
	}
	var saved map[string]any
	env := NewEnv(func(k string, v any) { saved = map[string]any{k: v} })
	_ = saved
	cases := []struct {
		method, url, hdr string
		global           map[string]any
		want             string
	}{
		{"GET", "/x", "", nil, ""},
		{"DELETE", "/x", "", nil, "line 1"},
		{"GET", "/x", "1", nil, "blocked by header"},
		{"GET", "/x?debug=1", "", nil, "debug not allowed"},
		{"POST", "/x", "", map[string]any{"limit": 1}, "line 4"},
	}
	for _, c := range cases {
		var body *strings.Reader = strings.NewReader("")
		if c.method == "POST" {
			body = strings.NewReader("hello")
		}
		r := httptest.NewRequest(c.method, c.url, body)
		if c.hdr != "" {
			r.Header.Set("X-Block", c.hdr)
		}
		env.Reset(r, "1.2.3.4", Upstream{Service: "svc"}, c.global)
		got := p.Eval(env)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s %s: got %q, want %q", c.method, c.url, got, c.want)
		}
		if c.want == "" && r.Header.Get("X-From-Program") != "svc" {
			t.Errorf("set_header did not set the header")
		}
	}
}

func TestSetGlobal(t *testing.T) {
	p, err := Compile(spec(`set_global("seen", request.path)`))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	env := NewEnv(func(k string, v any) { got[k] = v })
	env.Reset(httptest.NewRequest("GET", "/a/b", nil), "", Upstream{}, nil)
	if r := p.Eval(env); r != "" {
		t.Fatal(r)
	}
	if got["seen"] != "/a/b" {
		t.Fatalf("global = %v", got)
	}
}

func TestCompileErrorNamesLineAndColumn(t *testing.T) {
	_, err := Compile(spec("true\nrequest.method == \"GET\" &&"))
	var ce *CompileError
	if !errors.As(err, &ce) || ce.Line != 2 || ce.Column < 20 {
		t.Fatalf("err = %#v", err)
	}
	if _, err := Compile(Spec{Expr: "%%%"}); err == nil {
		t.Fatal("bad base64 accepted")
	}
	if _, err := Compile(spec("no_such_var > 1")); err == nil {
		t.Fatal("unknown variable accepted")
	}
	if _, err := Compile(spec("\n\n")); err == nil {
		t.Fatal("empty program accepted")
	}
}

func TestRuntimeErrorRejects(t *testing.T) {
	p, err := Compile(spec(`int(get_header("X-N")) > 0`))
	if err != nil {
		t.Fatal(err)
	}
	env := NewEnv(nil)
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-N", "abc")
	env.Reset(r, "", Upstream{}, nil)
	if got := p.Eval(env); got == "" {
		t.Fatal("runtime error did not reject")
	}
}
