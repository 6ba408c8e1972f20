// Package main is a test plugin that requires a newer httprouter than the
// host has. pcompile must refuse it at build time.
package main

import (
	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/sdk"
)

// Plugin is the declaration plugd looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "newdep",
	Version: "v1",
	NewAPI:  func(sdk.Host) (sdk.API, error) { return httprouter.New(), nil },
}

func main() {}
