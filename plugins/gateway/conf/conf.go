// Package conf holds the gateway's configuration types: the plugin's YAML
// section and the per-service config the management API reads and writes
// (field names and JSON shape as in the seed).
package conf

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// ReverseProxy is the seed's reverse_proxy block. ResponseHeaderTimeout is
// an addition: how long an upstream may take to answer a request it was
// sent (the head; a body may take longer), DefaultResponseHeaderTimeout
// when empty, no limit when "0s".
type ReverseProxy struct {
	TrimRoutingKeyPrefix  bool   `json:"trim_routing_key_prefix" yaml:"trim_routing_key_prefix"`
	RetryCount            int    `json:"retry_count" yaml:"retry_count"`
	DialTimeout           string `json:"dial_timeout" yaml:"dial_timeout"`
	TLSHandshakeTimeout   string `json:"tls_handshake_timeout" yaml:"tls_handshake_timeout"`
	Scheme                string `json:"scheme" yaml:"scheme"`
	ResponseHeaderTimeout string `json:"response_header_timeout,omitempty" yaml:"response_header_timeout"`
}

// DefaultResponseHeaderTimeout is nginx's proxy_read_timeout default.
const DefaultResponseHeaderTimeout = 60 * time.Second

// ResponseHeaderTimeoutOrDefault is the effective response_header_timeout;
// 0 means no limit. The value must have passed Validate.
func (r ReverseProxy) ResponseHeaderTimeoutOrDefault() time.Duration {
	d, _ := Duration("reverse_proxy.response_header_timeout", r.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	return d
}

// LoadBalance is the seed's load_balance block. HashHeader is an addition:
// with strategy hash, the header whose value is hashed (client IP if empty).
type LoadBalance struct {
	Strategy   string `json:"strategy" yaml:"strategy"`
	HashHeader string `json:"hash_header,omitempty" yaml:"hash_header"`
}

// RateLimiter is the seed's rate_limiter block: Rate tokens per second,
// Peak the burst; Rate 0 means unlimited.
type RateLimiter struct {
	Rate float64 `json:"rate" yaml:"rate"`
	Peak int     `json:"peak" yaml:"peak"`
}

// Breaker is the seed's breaker block (sony/gobreaker settings).
type Breaker struct {
	Name                string `json:"name" yaml:"name"`
	MaxFailures         uint32 `json:"max_failures" yaml:"max_failures"`
	HalfOpenMaxRequests uint32 `json:"half_open_max_requests" yaml:"half_open_max_requests"`
	OpenTimeout         string `json:"open_timeout" yaml:"open_timeout"`
	Interval            string `json:"interval" yaml:"interval"`
}

// Service is the config of one service, as GET /management/config shows it.
// SLP is an addition: the name of an SLP run as a filter on each request.
type Service struct {
	ReverseProxy ReverseProxy `json:"reverse_proxy" yaml:"reverse_proxy"`
	LoadBalance  LoadBalance  `json:"load_balance" yaml:"load_balance"`
	RateLimiter  RateLimiter  `json:"rate_limiter" yaml:"rate_limiter"`
	Breaker      Breaker      `json:"breaker" yaml:"breaker"`
	SLP          string       `json:"slp,omitempty" yaml:"slp"`
}

// Default is the config of a service nobody configured.
func Default() Service {
	return Service{
		ReverseProxy: ReverseProxy{TrimRoutingKeyPrefix: true, RetryCount: 1},
		LoadBalance:  LoadBalance{Strategy: RoundRobin},
		Breaker: Breaker{MaxFailures: 5, HalfOpenMaxRequests: 1,
			OpenTimeout: "30s", Interval: "30s"},
	}
}

// Strategy names, as the seed lists them.
const (
	RoundRobin         = "round-robin"
	Random             = "random"
	WeightedRoundRobin = "weighted-round-robin"
	WeightedRandom     = "weighted-random"
	LessLoad           = "less-load"
	Hash               = "hash"
)

// Strategies lists every accepted strategy in canonical spelling.
var Strategies = []string{RoundRobin, Random, WeightedRoundRobin, WeightedRandom, LessLoad, Hash}

// NormalizeStrategy accepts the seed's spellings (round-robin and
// round_robin alike, any case) and returns the canonical one.
func NormalizeStrategy(s string) (string, error) {
	n := strings.ReplaceAll(strings.ToLower(strings.TrimSpace(s)), "_", "-")
	if n == "" {
		return RoundRobin, nil
	}
	for _, k := range Strategies {
		if n == k {
			return k, nil
		}
	}
	return "", fmt.Errorf("unknown load balance strategy %q (want one of %s)", s, strings.Join(Strategies, ", "))
}

// Duration parses an optional duration; empty gives def.
func Duration(field, s string, def time.Duration) (time.Duration, error) {
	if strings.TrimSpace(s) == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s: invalid duration %q", field, s)
	}
	return d, nil
}

// Normalize validates c and canonicalizes the strategy spelling.
func (c *Service) Normalize() error {
	st, err := NormalizeStrategy(c.LoadBalance.Strategy)
	if err != nil {
		return err
	}
	c.LoadBalance.Strategy = st
	if err := c.ReverseProxy.Validate(); err != nil {
		return err
	}
	if err := c.RateLimiter.Validate(); err != nil {
		return err
	}
	return c.Breaker.Validate()
}

// Validate checks the reverse proxy block.
func (r ReverseProxy) Validate() error {
	if r.RetryCount < 0 || r.RetryCount > 10 {
		return fmt.Errorf("reverse_proxy.retry_count must be between 0 and 10, got %d", r.RetryCount)
	}
	if _, err := Duration("reverse_proxy.dial_timeout", r.DialTimeout, 0); err != nil {
		return err
	}
	if _, err := Duration("reverse_proxy.tls_handshake_timeout", r.TLSHandshakeTimeout, 0); err != nil {
		return err
	}
	if _, err := Duration("reverse_proxy.response_header_timeout", r.ResponseHeaderTimeout, 0); err != nil {
		return err
	}
	switch r.Scheme {
	case "", "http", "https":
	default:
		return fmt.Errorf("reverse_proxy.scheme must be http or https, got %q", r.Scheme)
	}
	return nil
}

// Validate checks the limiter block.
func (r RateLimiter) Validate() error {
	if r.Rate < 0 || r.Peak < 0 {
		return fmt.Errorf("rate_limiter: rate and peak must not be negative")
	}
	return nil
}

// Validate checks the breaker block.
func (b Breaker) Validate() error {
	if _, err := Duration("breaker.open_timeout", b.OpenTimeout, 0); err != nil {
		return err
	}
	if _, err := Duration("breaker.interval", b.Interval, 0); err != nil {
		return err
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName reports whether s can be a service (routing key) name: one URL
// path segment of safe characters.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Upstream is a static upstream instance from the YAML config.
type Upstream struct {
	ID       string            `yaml:"id"`
	Hostname string            `yaml:"hostname"`
	Address  string            `yaml:"address"`
	Weight   int               `yaml:"weight"`
	Metadata map[string]string `yaml:"metadata"`
}

// HealthCheck configures active health checks of a service's instances.
type HealthCheck struct {
	Path               string `yaml:"path" json:"path"`
	Interval           string `yaml:"interval" json:"interval"`
	Timeout            string `yaml:"timeout" json:"timeout"`
	HealthyThreshold   int    `yaml:"healthy_threshold" json:"healthy_threshold"`
	UnhealthyThreshold int    `yaml:"unhealthy_threshold" json:"unhealthy_threshold"`
}

// StaticService is a service declared in the YAML config.
type StaticService struct {
	Upstreams []Upstream `yaml:"upstreams"`
	// Config, when set, is the service's initial config; changes made
	// through the management API (kept in the store) take precedence.
	Config      *Service     `yaml:"config"`
	HealthCheck *HealthCheck `yaml:"health_check"`
}

// Plugin is the plugin's section plugins.gateway of the host config.
type Plugin struct {
	// Listen is the data plane's address.
	Listen string `yaml:"listen"`
	// Prefix is the path prefix before the routing key.
	Prefix     string `yaml:"prefix"`
	Management struct {
		// Password is md5(md5(password)) in hex; empty turns auth off.
		Password string `yaml:"password"`
	} `yaml:"management"`
	// Default is the config of services that have none of their own.
	Default  *Service                 `yaml:"default"`
	Services map[string]StaticService `yaml:"services"`
	// MaxIdleConnsPerHost sizes the keep-alive pool per upstream.
	MaxIdleConnsPerHost int `yaml:"max_idle_conns_per_host"`
	// Engine is the data plane's HTTP server: "event" (default: event
	// loops on epoll for the common requests, the "fast" engine for the
	// rest; Linux only, elsewhere it is "fast"), "fast" (the gateway's own
	// HTTP/1.1 server, a goroutine per connection) or "std" (net/http's).
	Engine string `yaml:"engine"`
	// Loops is the number of event loops of the event engine (0: one per
	// CPU, GOMAXPROCS). Fewer leave CPU time to the rest of the process
	// when the data plane is saturated (see the README).
	Loops int `yaml:"loops"`
}

// DefaultPlugin returns the plugin config before the YAML is applied.
func DefaultPlugin() Plugin {
	return Plugin{Listen: "127.0.0.1:8080", Prefix: "/", MaxIdleConnsPerHost: 512, Engine: "event"}
}

// Normalize validates the plugin config.
func (p *Plugin) Normalize() error {
	if p.Listen == "" {
		return fmt.Errorf("gateway.listen must not be empty")
	}
	if !strings.HasPrefix(p.Prefix, "/") {
		p.Prefix = "/" + p.Prefix
	}
	if !strings.HasSuffix(p.Prefix, "/") {
		p.Prefix += "/"
	}
	p.Management.Password = strings.ToLower(strings.TrimSpace(p.Management.Password))
	if p.Default != nil {
		if err := p.Default.Normalize(); err != nil {
			return fmt.Errorf("gateway.default: %w", err)
		}
	}
	for name, s := range p.Services {
		if !ValidName(name) {
			return fmt.Errorf("gateway.services: invalid service name %q", name)
		}
		for i, u := range s.Upstreams {
			if u.Address == "" {
				return fmt.Errorf("gateway.services.%s.upstreams[%d]: address is required", name, i)
			}
		}
		if s.Config != nil {
			if err := s.Config.Normalize(); err != nil {
				return fmt.Errorf("gateway.services.%s.config: %w", name, err)
			}
		}
	}
	switch p.Engine {
	case "":
		p.Engine = "event"
	case "event", "fast", "std":
	default:
		return fmt.Errorf("gateway.engine must be event, fast or std, got %q", p.Engine)
	}
	if p.MaxIdleConnsPerHost <= 0 {
		p.MaxIdleConnsPerHost = 512
	}
	if p.Loops < 0 {
		return fmt.Errorf("gateway.loops must be 0 (one per CPU) or more, got %d", p.Loops)
	}
	return nil
}
