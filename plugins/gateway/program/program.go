// Package program compiles and runs the seed's per-service programs:
// base64-encoded expr-lang/expr source, one expression per line, compiled
// once when stored and evaluated on every request of the service.
//
// A line rejects the request when it yields false, an error, or a non-empty
// string (the string is the reason). Anything else (true, nil, "", numbers)
// lets the request through. Blank lines and lines starting with # or // are
// ignored.
//
// In scope: request (method, path, host, remote_addr, client_ip,
// raw_query, proto, content_length, header), upstream (service, instances,
// available), global (the global variables) and the helpers
// terminate_if(cond, reason), get_header(name), set_header(name, value),
// del_header(name), query(name) and set_global(key, value).
package program

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
)

// Request is the request as programs see it.
type Request struct {
	Method        string      `expr:"method"`
	Path          string      `expr:"path"`
	Host          string      `expr:"host"`
	RemoteAddr    string      `expr:"remote_addr"`
	ClientIP      string      `expr:"client_ip"`
	RawQuery      string      `expr:"raw_query"`
	Proto         string      `expr:"proto"`
	ContentLength int64       `expr:"content_length"`
	Header        http.Header `expr:"header"`
}

// Upstream describes the service the request is routed to.
type Upstream struct {
	Service   string `expr:"service"`
	Instances int    `expr:"instances"`
	Available int    `expr:"available"`
}

// Env is the per-request environment. Build one with NewEnv and reuse it
// (Reset per request): the helper closures are bound once.
type Env struct {
	Request   Request                          `expr:"request"`
	Upstream  Upstream                         `expr:"upstream"`
	Global    map[string]any                   `expr:"global"`
	GetHeader func(name string) string         `expr:"get_header"`
	SetHeader func(name, value string) bool    `expr:"set_header"`
	DelHeader func(name string) bool           `expr:"del_header"`
	Query     func(name string) string         `expr:"query"`
	SetGlobal func(key string, value any) bool `expr:"set_global"`

	r         *http.Request
	setGlobal func(key string, value any)
	vm        vm.VM
}

// NewEnv returns an environment whose set_global calls setGlobal.
func NewEnv(setGlobal func(key string, value any)) *Env {
	e := &Env{setGlobal: setGlobal}
	e.GetHeader = func(n string) string {
		if e.r == nil {
			return ""
		}
		return e.r.Header.Get(n)
	}
	e.SetHeader = func(n, v string) bool {
		if e.r != nil {
			e.r.Header.Set(n, v)
		}
		return true
	}
	e.DelHeader = func(n string) bool {
		if e.r != nil {
			e.r.Header.Del(n)
		}
		return true
	}
	e.Query = func(n string) string {
		if e.r == nil {
			return ""
		}
		return e.r.URL.Query().Get(n)
	}
	e.SetGlobal = func(k string, v any) bool {
		if e.setGlobal != nil {
			e.setGlobal(k, v)
		}
		return true
	}
	return e
}

// Reset points the environment at a request.
func (e *Env) Reset(r *http.Request, clientIP string, up Upstream, global map[string]any) {
	e.r = r
	e.Request = Request{Method: r.Method, Path: r.URL.Path, Host: r.Host, RemoteAddr: r.RemoteAddr,
		ClientIP: clientIP, RawQuery: r.URL.RawQuery, Proto: r.Proto,
		ContentLength: r.ContentLength, Header: r.Header}
	e.Upstream = up
	e.Global = global
}

// Clear drops the references to the request.
func (e *Env) Clear() {
	e.r = nil
	e.Request = Request{}
	e.Global = nil
}

// Spec is a program as the management API stores and shows it.
type Spec struct {
	Expr        string `json:"expr"`
	Name        string `json:"name"`
	ServiceName string `json:"service_name"`
}

// Program is a compiled Spec.
type Program struct {
	Spec  Spec
	lines []line
	keeps bool
}

// KeepsValues reports whether the program may keep a value of the request
// beyond its run: it calls set_global (any mention counts). Other
// programs only read the request while they run.
func (p *Program) KeepsValues() bool { return p.keeps }

type line struct {
	no  int
	src string
	p   *vm.Program
}

// CompileError names the line and column of a syntax or type error.
type CompileError struct {
	Line, Column int
	Msg          string
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
}

func options() []expr.Option {
	return []expr.Option{
		// The struct value, not a pointer: with *Env (which has methods)
		// expr compiles `request.method` to a by-name reflect lookup on
		// every run (MethodByName, a field-name cache, a 128-byte copy of
		// Request into an interface); with Env it compiles to one load by
		// field index. Programs still run against an *Env.
		expr.Env(Env{}),
		expr.Function("terminate_if", func(p ...any) (any, error) {
			cond, _ := p[0].(bool)
			if !cond {
				return "", nil
			}
			return p[1].(string), nil
		}, new(func(bool, string) string)),
	}
}

// Compile decodes and compiles spec. Errors are *CompileError (source
// problems, with line and column) or plain errors (bad base64, empty).
func Compile(spec Spec) (*Program, error) {
	src, err := base64.StdEncoding.DecodeString(strings.TrimSpace(spec.Expr))
	if err != nil {
		if src, err = base64.RawStdEncoding.DecodeString(strings.TrimSpace(spec.Expr)); err != nil {
			return nil, fmt.Errorf("expr is not valid base64: %v", err)
		}
	}
	p := &Program{Spec: spec, keeps: strings.Contains(string(src), "set_global")}
	for i, l := range strings.Split(string(src), "\n") {
		t := strings.TrimSpace(strings.TrimSuffix(l, "\r"))
		if t == "" || strings.HasPrefix(t, "#") || strings.HasPrefix(t, "//") {
			continue
		}
		prog, err := expr.Compile(t, options()...)
		if err != nil {
			ce := &CompileError{Line: i + 1, Column: 1, Msg: err.Error()}
			var fe *file.Error
			if errors.As(err, &fe) {
				ce.Column = fe.Column + 1 + (len(l) - len(strings.TrimLeft(l, " \t")))
				ce.Msg = fe.Message
			}
			return nil, ce
		}
		p.lines = append(p.lines, line{no: i + 1, src: t, p: prog})
	}
	if len(p.lines) == 0 {
		return nil, errors.New("expr holds no expression")
	}
	return p, nil
}

// Lines is the number of expressions.
func (p *Program) Lines() int { return len(p.lines) }

// Eval runs every line against env and returns "" when the request may
// pass, or the reason it is rejected.
func (p *Program) Eval(env *Env) string {
	for _, l := range p.lines {
		out, err := env.vm.Run(l.p, env)
		if err != nil {
			return fmt.Sprintf("program %s line %d (%s): %v", p.Spec.Name, l.no, l.src, err)
		}
		switch v := out.(type) {
		case bool:
			if !v {
				return fmt.Sprintf("program %s line %d rejected the request: %s", p.Spec.Name, l.no, l.src)
			}
		case string:
			if v != "" {
				return v
			}
		}
	}
	return ""
}
