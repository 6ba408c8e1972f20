// Package main is a test plugin in its own module (example.com/extmod)
// outside the host's tree. It requires an OLDER logrus than the host: MVS
// selects the host's version, so pcompile builds it.
package main

import (
	"fmt"
	"net/http"

	"example.com/extmod/internal/text"
	"github.com/plugd/plugd/sdk"
	"github.com/sirupsen/logrus"
)

// Plugin is the declaration plugd looks up.
var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "extmod",
	Version: "v1",
	NewAPI: func(sdk.Host) (sdk.API, error) {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, text.Line(), logrus.InfoLevel)
		}), nil
	},
}

func main() {}
