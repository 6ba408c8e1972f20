// Command appbuild is the CRUD load generator of scripts/bench/appbuild.sh:
// it drives App/Version/Channel endpoints of a running appbuild.v1 on
// loopback with C workers for at most D or N requests, and prints the rate.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:2539/appbuild/v1", "appbuild.v1 base URL (loopback)")
	user := flag.String("user", "admin", "Basic auth user")
	pass := flag.String("pass", "guessme", "Basic auth password")
	workers := flag.Int("c", 8, "concurrent workers")
	maxN := flag.Int64("n", 200000, "stop after this many requests")
	dur := flag.Duration("d", 10*time.Second, "stop after this long")
	hash := flag.String("hash", "", "print the bcrypt hash of this password (for the config) and exit")
	flag.Parse()
	if *hash != "" {
		h, err := bcrypt.GenerateFromPassword([]byte(*hash), bcrypt.DefaultCost)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(string(h))
		return
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *workers}, Timeout: 10 * time.Second}
	call := func(method, path string, body any) (int, []byte, error) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, *base+path, rd)
		req.SetBasicAuth(*user, *pass)
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b, nil
	}
	st, b, err := call("POST", "/api/app", map[string]any{"name": "bench", "platforms": []string{"android"}})
	if err != nil || st != 201 {
		fmt.Fprintf(os.Stderr, "create app: %d %s %v\n", st, b, err)
		os.Exit(1)
	}
	var app struct{ ID string }
	json.Unmarshal(b, &app)

	var n, errs atomic.Int64
	var lat sync.Mutex
	var total time.Duration
	deadline := time.Now().Add(*dur)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline) && n.Load() < *maxN; i++ {
				// One cycle: create, get, update, list, delete a channel.
				code := fmt.Sprintf("w%d-%d", w, i)
				steps := []func() (int, int){
					func() (int, int) {
						st, b, _ := call("POST", "/api/app/"+app.ID+"/channel", map[string]string{"code": code, "name": code, "platform": "android"})
						var c struct{ ID string }
						json.Unmarshal(b, &c)
						code = c.ID
						return st, 201
					},
					func() (int, int) { st, _, _ := call("GET", "/api/app/"+app.ID+"/channel/"+code, nil); return st, 200 },
					func() (int, int) {
						st, _, _ := call("PUT", "/api/app/"+app.ID+"/channel/"+code, map[string]string{"name": "renamed"})
						return st, 201
					},
					func() (int, int) { st, _, _ := call("GET", "/api/app/"+app.ID, nil); return st, 200 },
					func() (int, int) {
						st, _, _ := call("DELETE", "/api/app/"+app.ID+"/channel/"+code, nil)
						return st, 204
					},
				}
				for _, s := range steps {
					t := time.Now()
					got, want := s()
					d := time.Since(t)
					lat.Lock()
					total += d
					lat.Unlock()
					n.Add(1)
					if got != want {
						errs.Add(1)
					}
				}
			}
		}(w)
	}
	wg.Wait()
	el := time.Since(t0)
	fmt.Printf("CRUD: %d requests in %s with %d workers: %.0f requests/s, mean latency %.2f ms, %d unexpected statuses\n",
		n.Load(), el.Round(time.Millisecond), *workers, float64(n.Load())/el.Seconds(),
		float64(total.Microseconds())/1000/float64(max(n.Load(), 1)), errs.Load())
	call("DELETE", "/api/app/"+app.ID, nil)
	if errs.Load() > 0 {
		os.Exit(1)
	}
}
