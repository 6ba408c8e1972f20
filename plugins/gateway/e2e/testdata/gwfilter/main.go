// Command gwfilter is a test SLP used as a gateway request filter: it
// refuses requests with X-Deny and marks the others with X-Filtered.
package main

import (
	"net/http"

	"github.com/plugd/plugd/sdk"
)

var Plugin = sdk.Declaration{
	ABI:     sdk.ABIVersion,
	Name:    "gwfilter",
	Version: "v1",
	NewSLP:  func(sdk.Host) (sdk.SLP, error) { return filter{}, nil },
}

func main() {}

type filter struct{}

func (filter) Filter(w http.ResponseWriter, r *http.Request, next http.Handler) {
	if r.Header.Get("X-Deny") != "" {
		http.Error(w, "denied by gwfilter", http.StatusForbidden)
		return
	}
	r.Header.Set("X-Filtered", "gwfilter")
	next.ServeHTTP(w, r)
}
