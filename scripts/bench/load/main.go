// Command load is the benchmarks' HTTP load generator and reference server.
//
//	load -url URL [-c 16] [-n 20000] [-d 10s]   # prints: reqs req/s p50 p99 errors
//	load -serve ADDR                            # a bare net/http JSON handler
//
// Every run is bounded by both -n and -d.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	url := flag.String("url", "", "URL to GET")
	conc := flag.Int("c", 16, "concurrent clients")
	n := flag.Int("n", 20000, "total requests (upper bound)")
	dur := flag.Duration("d", 10*time.Second, "duration (upper bound)")
	serve := flag.String("serve", "", "serve a bare handler on this address instead")
	flag.Parse()
	if *serve != "" {
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			io.WriteString(w, `{"plugin":"bare"}`+"\n")
		})
		fmt.Fprintln(os.Stderr, http.ListenAndServe(*serve, nil))
		os.Exit(1)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: *conc, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var next, errs atomic.Int64
	lat := make([][]time.Duration, *conc)
	deadline := time.Now().Add(*dur)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for next.Add(1) <= int64(*n) && time.Now().Before(deadline) {
				t := time.Now()
				resp, err := client.Get(*url)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if len(all) == 0 {
		fmt.Println("0 0 0 0", errs.Load())
		return
	}
	p := func(q float64) time.Duration { return all[int(q*float64(len(all)-1))] }
	fmt.Printf("%d %.0f %d %d %d\n", len(all), float64(len(all))/elapsed.Seconds(), p(0.5).Microseconds(), p(0.99).Microseconds(), errs.Load())
}
