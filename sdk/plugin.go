// Package sdk is the one contract between the plugd host and its plugins.
//
// A plugin is a Go main package built with pcompile. It exports one
// variable, Plugin, of type sdk.Declaration:
//
//	var Plugin = sdk.Declaration{
//		ABI:     sdk.ABIVersion,
//		Name:    "hello",
//		Version: "v1",
//		NewAPI:  func(h sdk.Host) (sdk.API, error) { return newAPI(h), nil },
//	}
//
// The host looks the symbol up, checks ABI, and calls NewAPI (and/or NewSLP)
// once per load. Loading the same name again builds a fresh instance from
// the new file and swaps it in; the old instance drains and is stopped.
//
// Everything a plugin may use from the host comes through Host. Plugins never
// import the host or each other: they meet through the store, the service
// registry and SLP sessions.
package sdk

import (
	"context"
	"net/http"
)

// ABIVersion is the version of this contract. The host refuses a plugin
// whose Declaration.ABI differs. It changes only when an existing type or
// method of this package changes meaning; additions keep it.
const ABIVersion = 1

// SymbolName is the exported symbol the host looks up in every plugin.
const SymbolName = "Plugin"

// Declaration describes a plugin. A plugin exports exactly one, named Plugin.
type Declaration struct {
	// ABI must be ABIVersion.
	ABI int
	// Name is the plugin's name: the default API name (URL /<Name>/<Version>/)
	// and SLP name, the store namespace and the config section. It matches
	// ^[a-z][a-z0-9_]*$.
	Name string
	// Version is the API version, "v1", "v2", ...
	Version string
	// NewAPI builds an API instance; nil when the plugin has no API.
	NewAPI func(Host) (API, error)
	// NewSLP builds an SLP instance; nil when the plugin has no SLP.
	NewSLP func(Host) (SLP, error)
}

// API is an HTTP API mounted by the host at /<name>/<version>/. The request
// the handler sees has that prefix stripped from URL.Path (the original is in
// the X-Plugd-Original-Path header); a request for the bare prefix arrives
// as "/".
//
// An API may also implement Starter, Stopper and HealthChecker.
type API interface {
	http.Handler
}

// Starter is implemented by plugins that must do work before they serve.
// Start runs before the instance receives its first request or session; an
// error aborts the load and the previous instance, if any, stays active.
type Starter interface {
	Start(ctx context.Context) error
}

// Stopper is implemented by plugins that hold resources. Stop runs once,
// after the instance has been replaced or unloaded and its in-flight work has
// drained (or the drain deadline passed). It must return before ctx's
// deadline; goroutines started with Host.Go are canceled after it returns.
// StopReasonFrom(ctx) tells whether the instance was replaced, unloaded or
// is stopping with the host.
type Stopper interface {
	Stop(ctx context.Context) error
}

// HealthChecker is implemented by plugins that can report their health. The
// host shows the result in its listings.
type HealthChecker interface {
	Health(ctx context.Context) error
}
