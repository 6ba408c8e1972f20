package sdk_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/plugd/plugd/sdk"
	"github.com/plugd/plugd/sdk/sdktest"
)

// A minimal API plugin: the declaration the host looks up, and a handler
// that answers JSON.
func ExampleDeclaration() {
	plugin := sdk.Declaration{
		ABI:     sdk.ABIVersion,
		Name:    "hello",
		Version: "v1",
		NewAPI: func(h sdk.Host) (sdk.API, error) {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sdk.WriteJSON(w, http.StatusOK, map[string]string{"hello": r.URL.Path})
			}), nil
		},
	}
	api, _ := plugin.NewAPI(sdktest.NewHost(&testing.T{}, "hello.v1"))
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, httptest.NewRequest("GET", "/world", nil))
	fmt.Print(rec.Code, " ", rec.Body.String())
	// Output: 200 {"hello":"/world"}
}

// DecodeJSON refuses unknown fields and oversize bodies with a status.
func ExampleDecodeJSON() {
	var in struct {
		Name string `json:"name"`
	}
	r := httptest.NewRequest("POST", "/", strings.NewReader(`{"name":"a","nmae":"b"}`))
	err := sdk.DecodeJSON(r, &in, 0)
	fmt.Println(sdk.StatusOf(err), err)
	r = httptest.NewRequest("POST", "/", strings.NewReader(`{"name":"`+strings.Repeat("x", 100)+`"}`))
	err = sdk.DecodeJSON(r, &in, 64)
	fmt.Println(sdk.StatusOf(err), err)
	// Output:
	// 400 invalid JSON body: json: unknown field "nmae"
	// 413 body larger than 64 bytes
}
