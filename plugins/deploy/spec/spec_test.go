package spec

import (
	"strings"
	"testing"
	"time"
)

func TestParseLainStyle(t *testing.T) {
	a, err := Parse([]byte(`appname: hello
build:
  base: golang
web:
  cmd: ./hello -v
  port: 8080
  memory: 64M
  num_instances: 3
  env: [A=1, B=two]
  healthcheck: /debug/ready
worker.queue:
  cmd: [./hello, "worker mode"]
  cpu: 0.5
portal.api:
  cmd: ./api
use_resources:
  redis:
    services: [redis]
`))
	if err != nil {
		t.Fatal(err)
	}
	if a.AppType != TypeService || len(a.Procs) != 3 || a.UseResources["redis"].Services[0] != "redis" {
		t.Fatalf("%+v", a)
	}
	w := a.Procs["web"]
	if w.Type != ProcWeb || w.NumInstances != 3 || w.Memory != 64<<20 || w.Env["B"] != "two" || w.Health.Path != "/debug/ready" || w.Health.Interval != 2*time.Second {
		t.Fatalf("web: %+v", w)
	}
	q := a.Procs["queue"]
	if q.Type != ProcWorker || q.CPU != 0.5 || q.Cmd != "./hello 'worker mode'" || q.NumInstances != 1 {
		t.Fatalf("queue: %+v", q)
	}
}

func TestParseErrors(t *testing.T) {
	for src, want := range map[string]string{
		"web:\n  num_instances: 1\n":                         "cmd is required",
		"web:\n  cmd: x\n  num_instances: 9999\n":            "num_instances",
		"web:\n  cmd: x\n  memory: lots\n":                   "memory",
		"web:\n  cmd: x\n  bogus: 1\n":                       "bogus",
		"procs:\n  x:\n    type: cron\n    cmd: x\n":         "type",
		"apptype: weird\nweb: {cmd: x}\n":                    "apptype",
		"web:\n  cmd: x\n  healthcheck: ready\n":             "must start with /",
		"web:\n  cmd: x\n  healthcheck: {interval: never}\n": "interval",
		"nothing: 1\n": "unknown key",
		"appname: x\n": "no procs",
	} {
		if _, err := Parse([]byte(src)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one naming %q", src, err, want)
		}
	}
}

func TestMemory(t *testing.T) {
	for in, want := range map[string]int64{"64M": 64 << 20, "64Mi": 64 << 20, "1G": 1 << 30, "0": 0, "8388608": 8 << 20, "1.5G": 3 << 29} {
		got, err := ParseMemory(in)
		if err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1M", "1K", "x", "2T"} {
		if _, err := ParseMemory(in); err == nil {
			t.Errorf("ParseMemory(%q) accepted", in)
		}
	}
	if FormatMemory(64<<20) != "64M" || FormatMemory(1<<30) != "1G" {
		t.Error("FormatMemory")
	}
}
