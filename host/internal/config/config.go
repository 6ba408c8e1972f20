// Package config reads plugd's YAML configuration strictly: an unknown key
// is an error that names the key and its line, in the host's sections and in
// each plugin's section alike.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the host's configuration.
type Config struct {
	Listen     string `yaml:"listen"`
	PluginsDir string `yaml:"plugins_dir"`
	DataDir    string `yaml:"data_dir"`
	// Watch turns the drop-in directory on (default) or off.
	Watch *bool `yaml:"watch"`
	// Token is required as "Authorization: Bearer <token>" on the
	// management API when Listen is not a loopback address.
	Token string `yaml:"token"`
	Log   struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"` // text or json
		// Access writes one line per management-listener request at info
		// level (default true); turn it off on busy hosts.
		Access *bool `yaml:"access"`
	} `yaml:"log"`
	// CheckTimeout bounds the trial load of a plugin in a child process.
	CheckTimeout Duration `yaml:"check_timeout"`
	// DrainTimeout bounds how long a replaced version may finish its
	// in-flight requests before its Stop runs anyway.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// StopTimeout is the deadline given to a plugin's Stop.
	StopTimeout Duration `yaml:"stop_timeout"`
	// Plugins holds each plugin's section, decoded by the plugin itself.
	Plugins map[string]yaml.Node `yaml:"plugins"`

	file string
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (want e.g. 10s): %w", n.Line, n.Value, err)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return time.Duration(d).String() }

// Default returns the configuration used when no file is given.
func Default() *Config {
	c := &Config{
		Listen:       "127.0.0.1:2539",
		PluginsDir:   "var/plugins",
		DataDir:      "var/data",
		CheckTimeout: Duration(30 * time.Second),
		DrainTimeout: Duration(30 * time.Second),
		StopTimeout:  Duration(10 * time.Second),
	}
	c.Log.Level = "info"
	c.Log.Format = "text"
	return c
}

// Load reads path over the defaults. A missing file is an error.
func Load(path string) (*Config, error) {
	c := Default()
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // empty file: defaults
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c.file = path
	return c, c.Validate()
}

// AccessLog reports whether requests are logged one line each.
func (c *Config) AccessLog() bool { return c.Log.Access == nil || *c.Log.Access }

// WatchEnabled reports whether the drop-in directory is on.
func (c *Config) WatchEnabled() bool { return c.Watch == nil || *c.Watch }

// Validate checks values that yaml cannot.
func (c *Config) Validate() error {
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("listen %q: want host:port", c.Listen)
	}
	if !IsLoopback(host) && c.Token == "" {
		return fmt.Errorf("listen %q is not a loopback address: set token so the management API requires it", c.Listen)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format %q: want text or json", c.Log.Format)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"check_timeout", c.CheckTimeout}, {"drain_timeout", c.DrainTimeout}, {"stop_timeout", c.StopTimeout}} {
		if d.v <= 0 {
			return fmt.Errorf("%s must be positive", d.name)
		}
	}
	return nil
}

// IsLoopback reports whether host (from host:port) only accepts local
// connections. An empty host listens on every interface.
func IsLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

var lineRE = regexp.MustCompile(`line (\d+)`)

// DecodePlugin decodes the section plugins.<name> into v, strictly. Line
// numbers in errors refer to the config file. No section leaves v as is.
func (c *Config) DecodePlugin(name string, v any) error {
	n, ok := c.Plugins[name]
	if !ok {
		return nil
	}
	// yaml.v3 has no strict mode for Node.Decode: re-encode the section and
	// decode it with KnownFields, then shift line numbers back.
	raw, err := yaml.Marshal(&n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		msg := lineRE.ReplaceAllStringFunc(err.Error(), func(m string) string {
			l, _ := strconv.Atoi(m[len("line "):])
			return "line " + strconv.Itoa(l+n.Line-1)
		})
		where := "config"
		if c.file != "" {
			where = c.file
		}
		return fmt.Errorf("%s: plugins.%s: %s", where, name, msg)
	}
	return nil
}
