// Command plugd is the plugin host: it serves the management API and loads,
// swaps and unloads Go plugins built by pcompile while it keeps serving.
//
//	plugd [-config FILE] [-listen ADDR] [-plugins DIR] [-data DIR]
//	plugd check [-json] FILE.so
//	plugd version
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "check":
			os.Exit(check(os.Args[2:]))
		case "version":
			version()
			return
		}
	}
	if err := serve(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "plugd:", err)
		os.Exit(1)
	}
}

func version() {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Println("plugd (no build info)")
		return
	}
	fmt.Printf("plugd %s %s\n", bi.Main.Version, bi.GoVersion)
	for _, s := range bi.Settings {
		fmt.Printf("  %s=%s\n", s.Key, s.Value)
	}
}

// check trial-loads a plugin in this (throwaway) process. It is what the
// host runs in a child before opening a file in the serving process.
func check(args []string) int {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	asJSON := fs.Bool("json", false, "print the verdict as one JSON line")
	fs.Usage = func() { fmt.Fprintln(os.Stderr, "usage: plugd check [-json] FILE.so") }
	fs.Parse(args)
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	res := trialLoad(fs.Arg(0))
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	} else if res.OK {
		kinds := ""
		if res.API {
			kinds += " api " + res.Name + "." + res.Version
		}
		if res.SLP {
			kinds += " slp " + res.Name
		}
		fmt.Printf("[OK] %s:%s\n", fs.Arg(0), kinds)
	} else {
		fmt.Printf("[KO] %s: %s\n", fs.Arg(0), res.Reason)
	}
	if !res.OK {
		return 1
	}
	return 0
}
