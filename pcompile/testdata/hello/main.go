// Package main is a test plugin for pcompile: an API whose answer comes from
// a subpackage, so successive builds with changed code in both must load
// side by side.
package main

import (
	"fmt"
	"net/http"

	"github.com/plugd/plugd/pcompile/testdata/hello/greet"
	"github.com/plugd/plugd/sdk"
)

const line = "main-1"

// Plugin is the declaration plugd looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "hello",
	Version: "v1",
	NewAPI: func(sdk.Host) (sdk.API, error) {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, line, greet.Message())
		}), nil
	},
}

func main() {}
