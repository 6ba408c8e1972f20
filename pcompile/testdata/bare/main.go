// Package main is the smallest plugin: it imports nothing, so building it
// with other settings is quick. pcompile's tests build it with plain
// `go build -buildmode=plugin` (no -trimpath) for `pcompile check`.
package main

// Plugin is not an sdk.Declaration: only its build info matters here.
var Plugin = "bare"

func main() {}
