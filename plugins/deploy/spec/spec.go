// Package spec parses an app's deployment spec, a YAML file in the style of
// lain.yaml: the procs an app runs (web or worker), their command, instance
// count, resources, environment and health check, and the resources it uses.
package spec

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// App types, as the seed names them.
const (
	TypeApp              = "app"
	TypeService          = "service"
	TypeResource         = "resource"
	TypeResourceInstance = "resource-instance"
)

// Proc types.
const (
	ProcWeb    = "web"
	ProcWorker = "worker"
	ProcPortal = "portal" // the entry proc of a service app; runs like web
)

// Limits bound a spec so one request cannot ask for absurd things.
const (
	MaxInstances = 200
	MaxCPU       = 64
	MinMemory    = 4 << 20
	MaxMemory    = 1 << 40
)

// App is a parsed spec.
type App struct {
	AppName      string                 `json:"appname,omitempty"`
	AppType      string                 `json:"apptype"`
	Procs        map[string]*Proc       `json:"procs"`
	UseResources map[string]UseResource `json:"use_resources,omitempty"`
}

// UseResource names a resource app the app needs; deploying the app creates
// the instance app resource.<resource>.<app>.
type UseResource struct {
	Services []string `json:"services,omitempty" yaml:"services"`
}

// Proc is one process kind of an app.
type Proc struct {
	Name         string            `json:"procname"`
	Type         string            `json:"type"`
	Cmd          string            `json:"cmd"`
	Port         int               `json:"port,omitempty"`
	NumInstances int               `json:"num_instances"`
	CPU          float64           `json:"cpu"`
	Memory       int64             `json:"memory"`
	Env          map[string]string `json:"env,omitempty"`
	Health       Health            `json:"healthcheck"`
}

// Health is a proc's health check. A web proc with a Path is probed with
// HTTP GET (2xx/3xx is healthy); without one, with a TCP connect to its
// port. A worker is healthy once it has stayed up for Grace.
type Health struct {
	Path     string        `json:"path,omitempty"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
	// Start is how long a new instance may take to become healthy.
	Start time.Duration `json:"start"`
	// Grace is how long a worker must stay up to count as healthy.
	Grace time.Duration `json:"grace"`
}

// IsWeb reports whether the proc serves HTTP on $PORT.
func (p *Proc) IsWeb() bool { return p.Type == ProcWeb || p.Type == ProcPortal }

// Names returns the proc names, sorted.
func (a *App) Names() []string {
	out := make([]string, 0, len(a.Procs))
	for n := range a.Procs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

var procNameRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,39}$`)

type rawProc struct {
	Type         string    `yaml:"type"`
	Cmd          yaml.Node `yaml:"cmd"`
	Port         int       `yaml:"port"`
	NumInstances *int      `yaml:"num_instances"`
	CPU          *float64  `yaml:"cpu"`
	Memory       yaml.Node `yaml:"memory"`
	Env          yaml.Node `yaml:"env"`
	HealthCheck  yaml.Node `yaml:"healthcheck"`
	// accepted for compatibility with lain.yaml and ignored
	Image       any `yaml:"image"`
	Mountpoint  any `yaml:"mountpoint"`
	Persistent  any `yaml:"persistent_dirs"`
	Logs        any `yaml:"logs"`
	Stateful    any `yaml:"stateful"`
	Secret      any `yaml:"secret_files"`
	HTTPPortSet any `yaml:"https_only"`
}

type rawHealth struct {
	Path     string `yaml:"path"`
	Interval string `yaml:"interval"`
	Timeout  string `yaml:"timeout"`
	Start    string `yaml:"start"`
	Grace    string `yaml:"grace"`
}

// Parse parses and validates a spec. Procs are given either under a
// `procs:` map (name → proc, with `type`) or lain-style as top-level keys
// `web`, `web.<name>`, `worker.<name>`, `portal.<name>`.
func Parse(data []byte) (*App, error) {
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("spec: %v", err)
	}
	if top == nil {
		return nil, fmt.Errorf("spec: empty document")
	}
	app := &App{Procs: map[string]*Proc{}}
	raws := map[string]struct {
		typ string
		n   yaml.Node
	}{}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		n := top[k]
		switch {
		case k == "appname":
			if err := n.Decode(&app.AppName); err != nil {
				return nil, fmt.Errorf("spec: appname: %v", err)
			}
		case k == "apptype":
			if err := n.Decode(&app.AppType); err != nil {
				return nil, fmt.Errorf("spec: apptype: %v", err)
			}
		case k == "use_resources":
			if err := n.Decode(&app.UseResources); err != nil {
				return nil, fmt.Errorf("spec: use_resources: %v", err)
			}
		case k == "procs":
			var m map[string]yaml.Node
			if err := n.Decode(&m); err != nil {
				return nil, fmt.Errorf("spec: procs: %v", err)
			}
			for name, pn := range m {
				raws[name] = struct {
					typ string
					n   yaml.Node
				}{"", pn}
			}
		case k == "web":
			raws["web"] = struct {
				typ string
				n   yaml.Node
			}{ProcWeb, n}
		case strings.HasPrefix(k, "web.") || strings.HasPrefix(k, "worker.") || strings.HasPrefix(k, "portal.") || strings.HasPrefix(k, "proc."):
			typ, name, _ := strings.Cut(k, ".")
			if typ == "proc" {
				typ = ""
			}
			raws[name] = struct {
				typ string
				n   yaml.Node
			}{typ, n}
		case k == "build" || k == "release" || k == "test" || k == "notify" || k == "service" || strings.HasPrefix(k, "service."):
			// lain.yaml build sections: appbuild's business, not ours
		default:
			return nil, fmt.Errorf("spec: line %d: unknown key %q", n.Line, k)
		}
	}
	for name, r := range raws {
		p, err := parseProc(name, r.typ, &r.n)
		if err != nil {
			return nil, err
		}
		if _, dup := app.Procs[name]; dup {
			return nil, fmt.Errorf("spec: proc %q defined twice", name)
		}
		app.Procs[name] = p
	}
	if app.AppType == "" {
		app.AppType = TypeApp
		for _, p := range app.Procs {
			if p.Type == ProcPortal {
				app.AppType = TypeService
			}
		}
	}
	switch app.AppType {
	case TypeApp, TypeService, TypeResource:
	default:
		return nil, fmt.Errorf("spec: apptype %q: want app, service or resource", app.AppType)
	}
	if len(app.Procs) == 0 {
		return nil, fmt.Errorf("spec: no procs")
	}
	for r := range app.UseResources {
		if !procNameRe.MatchString(r) {
			return nil, fmt.Errorf("spec: use_resources: bad resource name %q", r)
		}
	}
	return app, nil
}

func parseProc(name, typ string, n *yaml.Node) (*Proc, error) {
	if !procNameRe.MatchString(name) {
		return nil, fmt.Errorf("spec: bad proc name %q (want %s)", name, procNameRe)
	}
	var r rawProc
	dec := n
	if err := decodeStrict(dec, &r); err != nil {
		return nil, fmt.Errorf("spec: proc %s: %v", name, err)
	}
	p := &Proc{Name: name, Type: typ, Port: r.Port, NumInstances: 1, CPU: 0, Env: map[string]string{}}
	if r.Type != "" {
		if typ != "" && r.Type != typ {
			return nil, fmt.Errorf("spec: proc %s: type %q conflicts with key prefix %q", name, r.Type, typ)
		}
		p.Type = r.Type
	}
	if p.Type == "" {
		p.Type = ProcWorker
	}
	switch p.Type {
	case ProcWeb, ProcWorker, ProcPortal:
	default:
		return nil, fmt.Errorf("spec: proc %s: type %q: want web or worker", name, p.Type)
	}
	switch r.Cmd.Kind {
	case yaml.ScalarNode:
		p.Cmd = r.Cmd.Value
	case yaml.SequenceNode:
		var parts []string
		if err := r.Cmd.Decode(&parts); err != nil {
			return nil, fmt.Errorf("spec: proc %s: cmd: %v", name, err)
		}
		q := make([]string, len(parts))
		for i, s := range parts {
			q[i] = ShellQuote(s)
		}
		p.Cmd = strings.Join(q, " ")
	case 0:
	default:
		return nil, fmt.Errorf("spec: proc %s: cmd: want a string or a list", name)
	}
	if strings.TrimSpace(p.Cmd) == "" {
		return nil, fmt.Errorf("spec: proc %s: cmd is required", name)
	}
	if r.NumInstances != nil {
		p.NumInstances = *r.NumInstances
	}
	if p.NumInstances < 0 || p.NumInstances > MaxInstances {
		return nil, fmt.Errorf("spec: proc %s: num_instances %d out of 0..%d", name, p.NumInstances, MaxInstances)
	}
	if r.CPU != nil {
		if err := CheckCPU(*r.CPU); err != nil {
			return nil, fmt.Errorf("spec: proc %s: %v", name, err)
		}
		p.CPU = *r.CPU
	}
	if r.Memory.Kind != 0 {
		m, err := ParseMemory(r.Memory.Value)
		if err != nil {
			return nil, fmt.Errorf("spec: proc %s: %v", name, err)
		}
		p.Memory = m
	}
	switch r.Env.Kind {
	case 0:
	case yaml.SequenceNode:
		var list []string
		if err := r.Env.Decode(&list); err != nil {
			return nil, fmt.Errorf("spec: proc %s: env: %v", name, err)
		}
		for _, kv := range list {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("spec: proc %s: env %q: want KEY=VALUE", name, kv)
			}
			p.Env[k] = v
		}
	case yaml.MappingNode:
		if err := r.Env.Decode(&p.Env); err != nil {
			return nil, fmt.Errorf("spec: proc %s: env: %v", name, err)
		}
	default:
		return nil, fmt.Errorf("spec: proc %s: env: want a list or a map", name)
	}
	envRe := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	for k := range p.Env {
		if !envRe.MatchString(k) {
			return nil, fmt.Errorf("spec: proc %s: env: bad name %q", name, k)
		}
	}
	h := Health{Interval: 2 * time.Second, Timeout: time.Second, Start: 30 * time.Second, Grace: time.Second}
	var rh rawHealth
	switch r.HealthCheck.Kind {
	case 0:
	case yaml.ScalarNode:
		rh.Path = r.HealthCheck.Value
	case yaml.MappingNode:
		if err := decodeStrict(&r.HealthCheck, &rh); err != nil {
			return nil, fmt.Errorf("spec: proc %s: healthcheck: %v", name, err)
		}
	default:
		return nil, fmt.Errorf("spec: proc %s: healthcheck: want a path or a map", name)
	}
	if rh.Path != "" && !strings.HasPrefix(rh.Path, "/") {
		return nil, fmt.Errorf("spec: proc %s: healthcheck path %q must start with /", name, rh.Path)
	}
	h.Path = rh.Path
	for _, d := range []struct {
		s   string
		dst *time.Duration
		f   string
	}{{rh.Interval, &h.Interval, "interval"}, {rh.Timeout, &h.Timeout, "timeout"}, {rh.Start, &h.Start, "start"}, {rh.Grace, &h.Grace, "grace"}} {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v <= 0 || v > time.Hour {
			return nil, fmt.Errorf("spec: proc %s: healthcheck %s %q: want a duration like 2s", name, d.f, d.s)
		}
		*d.dst = v
	}
	p.Health = h
	return p, nil
}

func decodeStrict(n *yaml.Node, v any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// CheckCPU validates a CPU amount in cores (0 means unlimited).
func CheckCPU(c float64) error {
	if math.IsNaN(c) || c < 0 || c > MaxCPU {
		return fmt.Errorf("cpu %v out of 0..%d cores", c, MaxCPU)
	}
	return nil
}

// ParseMemory reads a memory size: a byte count or a number with a K, M, G
// or T suffix (powers of 1024, optional trailing B or i: 64M, 64Mi, 64MB).
// "0" means unlimited.
func ParseMemory(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "0" {
		return 0, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("memory %q: want a size like 64M", s)
	}
	if n < MinMemory || n > MaxMemory {
		return 0, fmt.Errorf("memory %q out of 4M..1T", s)
	}
	return n, nil
}

// ParseSize reads a positive size: a byte count or a number with a K, M,
// G or T suffix (powers of 1024, optional trailing B or i).
func ParseSize(s string) (int64, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	if u == "" {
		return 0, fmt.Errorf("size: empty")
	}
	u = strings.TrimSuffix(strings.TrimSuffix(u, "B"), "I")
	mult := int64(1)
	if n := len(u); n > 0 {
		switch u[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			u = u[:n-1]
		}
	}
	f, err := strconv.ParseFloat(u, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || f*float64(mult) > 1<<50 {
		return 0, fmt.Errorf("size %q: want a size like 64M", s)
	}
	return int64(f * float64(mult)), nil
}

// FormatMemory writes bytes the way ParseMemory reads them.
func FormatMemory(b int64) string {
	switch {
	case b == 0:
		return "0"
	case b%(1<<30) == 0:
		return fmt.Sprintf("%dG", b>>30)
	case b%(1<<20) == 0:
		return fmt.Sprintf("%dM", b>>20)
	case b%(1<<10) == 0:
		return fmt.Sprintf("%dK", b>>10)
	}
	return strconv.FormatInt(b, 10)
}

// ShellQuote quotes s for /bin/sh.
func ShellQuote(s string) string {
	if s != "" && regexp.MustCompile(`^[A-Za-z0-9_./:=@%+-]+$`).MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// MetaVersionRe is the form of a meta_version: <unix time>-<40-hex git sha>.
var MetaVersionRe = regexp.MustCompile(`^[0-9]{10}-[0-9a-f]{40}$`)
