// Command pcompile builds plugd plugins that a given plugd binary can load,
// and checks built plugins against it.
//
//	pcompile [-o DIR] [-host BIN] [-src DIR] [-keep] [-v] PLUGIN_DIR...
//	pcompile check [-host BIN] [-src DIR] FILE.so
//
// Every build is a new file (<name>-<buildid>.so) and a new plugin path for
// every package of the plugin: the plugin's tree is copied into a temporary
// module plugd.build/<name>_<buildid> with its own imports rewritten, and
// built in a Go workspace together with the host's source tree, with the
// host binary's toolchain and build settings. So any number of successive
// builds of one plugin load into one running host, and the SDK and every
// shared module are compiled from the same source as the host's.
//
// Built paths are printed on stdout, one a line; diagnostics go to stderr.
// The exit status is 1 on failure. `pcompile check` prints an [OK]/[KO]
// report and exits 1 on a mismatch, 2 when a file cannot be read.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	// On SIGINT/SIGTERM the running build is stopped and its temporary
	// files removed before pcompile exits (status 1).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func usage(fs *flag.FlagSet, stderr io.Writer, check bool) func() {
	return func() {
		if check {
			fmt.Fprintln(stderr, "usage: pcompile check [-host BIN] [-src DIR] FILE.so")
		} else {
			fmt.Fprintln(stderr, "usage: pcompile [-o DIR] [-host BIN] [-src DIR] [-keep] [-v] PLUGIN_DIR...\n       pcompile check [-host BIN] FILE.so")
		}
		fs.PrintDefaults()
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	check := len(args) > 0 && args[0] == "check"
	if check {
		args = args[1:]
	}
	fs := flag.NewFlagSet("pcompile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usage(fs, stderr, check)
	hostBin := fs.String("host", "", "host binary whose toolchain, settings and modules the plugin must match (default: plugd next to pcompile, else bin/plugd in the source tree)")
	srcDir := fs.String("src", "", "the host's source tree, a directory whose go.mod is module "+hostModule+" (default: found above pcompile's own directory, then above the current directory)")
	var outDir *string
	var keep, verbose *bool
	if !check {
		verbose = fs.Bool("v", false, "print the packages that go build compiles (not taken from the build cache) on stderr")
		outDir = fs.String("o", filepath.Join("var", "plugins"), "output directory for the .so files")
		keep = fs.Bool("keep", false, "keep the temporary build directory (its path is printed on stderr)")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if check {
		if fs.NArg() != 1 {
			fs.Usage()
			return 2
		}
		src, _ := resolveSource(*srcDir, nil)
		hb, err := resolveHost(*hostBin, src)
		if err != nil {
			fmt.Fprintln(stderr, "pcompile check:", err)
			return 2
		}
		return checkReport(fs.Arg(0), hb, stdout, stderr)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	src, err := resolveSource(*srcDir, fs.Args())
	if err != nil {
		fmt.Fprintln(stderr, "pcompile:", err)
		return 1
	}
	hb, err := resolveHost(*hostBin, src)
	if err != nil {
		fmt.Fprintln(stderr, "pcompile:", err)
		return 1
	}
	b, err := newBuilder(src, hb, *outDir, *keep, stderr)
	if err == nil {
		b.ctx = ctx
	}
	if err == nil && *verbose {
		b.goFlags = append(b.goFlags, "-v")
		b.verbose = true
	}
	if err != nil {
		fmt.Fprintln(stderr, "pcompile:", err)
		return 1
	}
	status := 0
	for _, dir := range fs.Args() {
		if ctx.Err() != nil {
			fmt.Fprintf(stderr, "pcompile: %s: not built: interrupted\n", dir)
			status = 1
			continue
		}
		res, err := b.build(dir)
		if err != nil {
			fmt.Fprintf(stderr, "pcompile: %s: %v\n", dir, err)
			status = 1
			continue
		}
		fmt.Fprintln(stdout, res.Path)
		fmt.Fprintf(stderr, "pcompile: %s: built %s in %.1fs\n", dir, res.File, res.Duration.Seconds())
	}
	return status
}

// resolveSource finds the host's source tree: -src if given, else the first
// directory above pcompile's executable, the current directory or a plugin
// directory whose go.mod declares the host's module.
func resolveSource(flagValue string, pluginDirs []string) (string, error) {
	if flagValue != "" {
		abs, err := filepath.Abs(flagValue)
		if err != nil {
			return "", err
		}
		mp, err := modulePath(filepath.Join(abs, "go.mod"))
		if err != nil {
			return "", fmt.Errorf("-src %s: %w", flagValue, err)
		}
		if mp != hostModule {
			return "", fmt.Errorf("-src %s: its go.mod is module %s, not %s", flagValue, mp, hostModule)
		}
		return abs, nil
	}
	var starts []string
	if exe, err := os.Executable(); err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		starts = append(starts, filepath.Dir(exe))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range pluginDirs {
		if abs, err := filepath.Abs(d); err == nil {
			starts = append(starts, abs)
		}
	}
	if src, ok := findHostSource(starts...); ok {
		return src, nil
	}
	return "", fmt.Errorf("cannot find the host's source tree (a directory whose go.mod is module %s) above pcompile or the current directory: pass -src DIR", hostModule)
}

// resolveHost picks the host binary: -host if given, else plugd next to
// pcompile's executable, else bin/plugd in the source tree.
func resolveHost(flagValue, src string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("-host: %w", err)
		}
		return flagValue, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		p := filepath.Join(filepath.Dir(exe), "plugd")
		if isFile(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	if src != "" {
		p := filepath.Join(src, "bin", "plugd")
		if isFile(p) {
			return p, nil
		}
		tried = append(tried, p)
	}
	return "", fmt.Errorf("no host binary found (tried %v): build it first (make build) or pass -host BIN", tried)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
