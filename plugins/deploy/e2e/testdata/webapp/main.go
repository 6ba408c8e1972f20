// webapp is the tiny HTTP server the deploy tests run as an app's proc.
//
//	GET /         {"app","proc","instance","version","pid","port"}
//	GET /healthz  200, or 500 when FAIL_HEALTH=1
//	GET /crash    exits with status 3
//	GET /alloc?mb=N  allocates and keeps N MiB
//	GET /say?tag=T&from=A&n=N  prints the lines "T A" … "T A+N-1" (A padded to 6 digits)
//
// With WORKER=1 it serves nothing and just runs; with SPIN=1 as well it
// keeps a CPU busy.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

var (
	keep [][]byte
	spin uint64
)

func main() {
	fmt.Printf("webapp %s/%s %s starting pid %d port %s\n", os.Getenv("APP_NAME"), os.Getenv("INSTANCE_ID"), os.Getenv("META_VERSION"), os.Getpid(), os.Getenv("PORT"))
	if os.Getenv("WORKER") == "1" {
		for os.Getenv("SPIN") == "1" {
			spin++
		}
		for {
			time.Sleep(time.Second)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if os.Getenv("FAIL_HEALTH") == "1" {
			http.Error(w, "unhealthy on purpose", 500)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/crash", func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("crashing on request")
		os.Exit(3)
	})
	mux.HandleFunc("/say", func(w http.ResponseWriter, r *http.Request) {
		from, _ := strconv.Atoi(r.URL.Query().Get("from"))
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		tag := r.URL.Query().Get("tag")
		for i := from; i < from+n; i++ {
			fmt.Printf("%s %06d\n", tag, i)
		}
		fmt.Fprintln(w, "said", n)
	})
	mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
		mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
		for i := 0; i < mb; i++ {
			b := make([]byte, 1<<20)
			for j := range b {
				b[j] = byte(j)
			}
			keep = append(keep, b)
		}
		fmt.Fprintln(w, "allocated", mb)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"app": os.Getenv("APP_NAME"), "proc": os.Getenv("PROC_NAME"), "instance": os.Getenv("INSTANCE_ID"),
			"version": os.Getenv("META_VERSION"), "pid": os.Getpid(), "port": os.Getenv("PORT"), "path": r.URL.Path,
		})
	})
	if err := http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
