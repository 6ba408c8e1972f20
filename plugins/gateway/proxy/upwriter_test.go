package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
)

// The last write of an upstream request waits for the answer (upWriter):
// answers slower than the slow-answer deadline, request bodies far larger
// than the connection's write buffer (flushed before the last write) and
// kept-alive reuse must all still work, with both engines.
func TestUpstreamWriteThenWait(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if strings.HasSuffix(r.URL.Path, "/slow") {
			time.Sleep(2 * slowMax)
		}
		w.Write(b)
	}))
	defer up.Close()
	g := testGateway(t, up, conf.Default())
	for _, engine := range []string{"fast", "std"} {
		t.Run(engine, func(t *testing.T) {
			var srv server = &Server{Handler: g}
			if engine == "std" {
				srv = &http.Server{Handler: g}
			}
			addr := serve(t, srv)
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
			for i := 0; i < 3; i++ {
				for _, tc := range []struct {
					path string
					body []byte
				}{{"/svc/slow", []byte("slow")}, {"/svc/big", big}, {"/svc/small", []byte("small")}} {
					resp, err := c.Post("http://"+addr+tc.path, "application/octet-stream", bytes.NewReader(tc.body))
					if err != nil {
						t.Fatal(err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || !bytes.Equal(b, tc.body) {
						t.Fatalf("round %d %s: status %d, %d bytes back of %d", i, tc.path, resp.StatusCode, len(b), len(tc.body))
					}
				}
			}
		})
	}
}
