// Command loadtest is a minimal plugin host for pcompile's tests: it opens
// every plugin named on the command line in ONE process, the way plugd
// does (plugin.Open, Lookup("Plugin"), NewAPI), serves one GET / request to
// each API and prints
//
//	OK <file> <name> <version> <response body>
//
// or "KO <file> <error>". It exits 1 if any plugin failed. It links the SDK
// and httprouter like the real host, so their versions are shared modules.
package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"plugin"
	"strings"

	"github.com/julienschmidt/httprouter"
	"github.com/plugd/plugd/sdk"
)

func load(path string) (string, error) {
	p, err := plugin.Open(path)
	if err != nil {
		return "", err
	}
	sym, err := p.Lookup(sdk.SymbolName)
	if err != nil {
		return "", err
	}
	d, ok := sym.(*sdk.Declaration)
	if !ok {
		return "", fmt.Errorf("symbol %s is a %T, not *sdk.Declaration", sdk.SymbolName, sym)
	}
	if d.ABI != sdk.ABIVersion || d.NewAPI == nil {
		return "", fmt.Errorf("ABI %d (want %d) or no API", d.ABI, sdk.ABIVersion)
	}
	api, err := d.NewAPI(nil)
	if err != nil {
		return "", err
	}
	r := httprouter.New()
	r.Handler(http.MethodGet, "/", api)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK {
		return "", fmt.Errorf("GET / answered %d", rec.Code)
	}
	return fmt.Sprintf("%s %s %s", d.Name, d.Version, strings.TrimSpace(rec.Body.String())), nil
}

func main() {
	status := 0
	for _, path := range os.Args[1:] {
		out, err := load(path)
		if err != nil {
			fmt.Printf("KO %s %v\n", path, err)
			status = 1
			continue
		}
		fmt.Printf("OK %s %s\n", path, out)
	}
	os.Exit(status)
}
