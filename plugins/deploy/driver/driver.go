// Package driver runs the procs of deployed apps. Driver is the seam for
// other schedulers (Nomad, Kubernetes): the console only says what each
// proc should be (Spec) and asks how it is (Status); the driver owns
// instances, restarts, health and rollouts.
package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"sort"
	"time"

	"github.com/plugd/plugd/plugins/deploy/spec"
)

// Spec is the desired state of one proc of one app.
type Spec struct {
	App         string            `json:"app"`
	Proc        string            `json:"proc"`
	MetaVersion string            `json:"meta_version"`
	Type        string            `json:"type"`
	Cmd         string            `json:"cmd"`
	Dir         string            `json:"dir"`
	Env         map[string]string `json:"env,omitempty"`
	// NumInstances is how many instances should run.
	NumInstances int         `json:"num_instances"`
	CPU          float64     `json:"cpu"`
	Memory       int64       `json:"memory"`
	Health       spec.Health `json:"health"`
	// Service, when set on a web proc, is the service registry name its
	// healthy instances are registered under.
	Service string `json:"service,omitempty"`
}

// Web reports whether instances serve HTTP on $PORT.
func (s *Spec) Web() bool { return s.Type == spec.ProcWeb || s.Type == spec.ProcPortal }

// RunHash identifies what an instance runs: two specs with the same hash
// differ at most in NumInstances, so changing only the count never restarts
// an instance.
func (s *Spec) RunHash() string {
	c := *s
	c.NumInstances = 0
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b, _ := json.Marshal(struct {
		S    Spec
		Keys []string
	}{c, keys})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Limits says how a proc's cpu and memory are enforced.
type Limits struct {
	// Mode is "cgroup-v2", "cgroup-v1" or "rlimit".
	Mode   string `json:"mode"`
	CPU    string `json:"cpu"`
	Memory string `json:"memory"`
	// MemoryBy is what enforces memory: "cgroup-v2", "cgroup-v1" or
	// "rss-watchdog"; CPUBy what enforces cpu: "cgroup-v2", "cgroup-v1"
	// or "none".
	MemoryBy string `json:"memory_enforced_by"`
	CPUBy    string `json:"cpu_enforced_by"`
}

// InstanceStatus is one instance of a proc.
type InstanceStatus struct {
	ID          string    `json:"id"`
	PID         int       `json:"pid,omitempty"`
	Port        int       `json:"port,omitempty"`
	Address     string    `json:"address,omitempty"`
	MetaVersion string    `json:"meta_version"`
	State       string    `json:"state"` // starting, running, backoff, stopping
	Healthy     bool      `json:"healthy"`
	Started     time.Time `json:"started"`
	Restarts    int       `json:"restarts"`
	LastExit    string    `json:"last_exit,omitempty"`
	RSS         int64     `json:"rss_bytes,omitempty"`
	Adopted     bool      `json:"adopted,omitempty"`
}

// ProcStatus is the observed state of a proc.
type ProcStatus struct {
	App         string           `json:"app"`
	Proc        string           `json:"proc"`
	MetaVersion string           `json:"meta_version"`
	Desired     int              `json:"desired"`
	Running     int              `json:"running"`
	Healthy     int              `json:"healthy"`
	Limits      Limits           `json:"limits"`
	Instances   []InstanceStatus `json:"instances"`
}

// LogOptions selects log output.
type LogOptions struct {
	Instance string // "" for every instance, lines prefixed with the id
	Tail     int    // last lines per instance; <0 for all
	Follow   bool
}

// Driver runs procs.
type Driver interface {
	// Name is the driver's name ("local").
	Name() string
	// Start takes over supervision: instances started by a previous
	// plugin instance or host are adopted if alive, restarted if not.
	Start(ctx context.Context) error
	// Stop ends supervision. With sdk.StopReplaced or sdk.StopShutdown in
	// ctx (sdk.StopReasonFrom) the instances keep running for the next
	// owner; on a final unload (sdk.StopUnloaded) every instance is
	// stopped and deregistered while the desired state stays stored, so
	// that the next Start brings them back.
	Stop(ctx context.Context) error
	// Apply converges a proc to s: it scales, and when what runs changes
	// (version, command, env, resources) it replaces instances one at a
	// time, each healthy before the next. On failure it restores the
	// previous spec and returns an error naming the cause.
	Apply(ctx context.Context, s Spec, progress func(string)) error
	// Remove stops every instance of the proc and forgets it.
	Remove(ctx context.Context, app, proc string) error
	// Status reports the proc; ok is false if the driver does not know it.
	Status(app, proc string) (st ProcStatus, ok bool)
	// Logs writes instance output to w.
	Logs(ctx context.Context, app, proc string, opt LogOptions, w io.Writer) error
}
