// Package compat decides whether a Go plugin file can be opened by a host
// binary, by comparing their build info before plugin.Open is tried.
//
// The host (before loading) and pcompile (after building, and in `pcompile
// check`) both use it, so they agree on what "compatible" means. A clean
// report is necessary but not sufficient: plugin.Open stays the final test
// (it also compares the hash of every shared package, which build info does
// not record).
package compat

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"
	"strings"
)

// Mismatch is one difference between the host's and a plugin's build that
// makes plugin.Open fail.
type Mismatch struct {
	What   string // "go version", "-trimpath", "module github.com/sirupsen/logrus"
	Host   string // the host's value
	Plugin string // the plugin's value
	Fix    string // how to fix it; may be empty
}

// String is one line: `<What>: host has <Host>, plugin has <Plugin>`,
// followed by "; fix: <Fix>" when there is a fix.
func (m Mismatch) String() string {
	s := fmt.Sprintf("%s: host has %s, plugin has %s", m.What, show(m.Host), show(m.Plugin))
	if m.Fix != "" {
		s += "; fix: " + m.Fix
	}
	return s
}

func show(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

// Check is one line of a full comparison: a compared item and whether it
// matches. Compare returns the failing ones as Mismatches.
type Check struct {
	Mismatch
	OK bool
}

// Settings compared between host and plugin, in report order. Values of
// absent settings count as "" (or "false" for the boolean flags).
var Settings = []string{"-trimpath", "-race", "-gcflags", "-asan", "-msan", "-tags",
	"CGO_ENABLED", "GOOS", "GOARCH", "GOEXPERIMENT"}

var boolSettings = map[string]bool{"-trimpath": true, "-race": true, "-asan": true, "-msan": true}

// Setting returns the value of build setting key in bi, normalized the way
// Compare sees it: "" when absent, "false" for an absent boolean flag.
func Setting(bi *debug.BuildInfo, key string) string {
	if bi != nil {
		for _, s := range bi.Settings {
			if s.Key == key {
				return s.Value
			}
		}
	}
	if boolSettings[key] {
		return "false"
	}
	return ""
}

const rebuildFix = "rebuild the plugin with pcompile against this host binary (it copies the host's build settings)"

// Checks compares every item that plugin.Open cares about and returns one
// Check per item, matching or not: the Go version, each of Settings, and
// each module present in both dependency lists. The host's main module,
// which the plugin lists as a dependency (devel, or replaced by the
// workspace), is not compared: its packages are compared by plugin.Open.
func Checks(host, plugin *debug.BuildInfo) []Check {
	if host == nil {
		host = &debug.BuildInfo{}
	}
	if plugin == nil {
		plugin = &debug.BuildInfo{}
	}
	var out []Check
	add := func(what, h, p, fix string) {
		out = append(out, Check{Mismatch: Mismatch{What: what, Host: h, Plugin: p, Fix: fix}, OK: h == p})
	}
	add("go version", host.GoVersion, plugin.GoVersion, goFix(host.GoVersion))
	for _, key := range Settings {
		fix := rebuildFix
		if key == "CGO_ENABLED" && Setting(host, key) != "1" {
			fix = "a host built with CGO_ENABLED=0 cannot load plugins: rebuild the host with CGO_ENABLED=1"
		}
		add(key, Setting(host, key), Setting(plugin, key), fix)
	}

	hostMods := map[string]*debug.Module{}
	for _, d := range host.Deps {
		hostMods[d.Path] = d
	}
	var paths []string
	pluginMods := map[string]*debug.Module{}
	for _, d := range plugin.Deps {
		if _, ok := hostMods[d.Path]; !ok || d.Path == host.Main.Path {
			continue
		}
		pluginMods[d.Path] = d
		paths = append(paths, d.Path)
	}
	sort.Strings(paths)
	for _, p := range paths {
		h, pl := effective(hostMods[p]), effective(pluginMods[p])
		what := "module " + p
		switch {
		case h.Path != pl.Path || h.Version != pl.Version:
			add(what, modString(h), modString(pl), fmt.Sprintf(
				"build both with the same version: rebuild the host with `go get %s@%s`, or make the plugin require %s@%s, then rebuild the plugin with pcompile",
				p, pl.Version, p, h.Version))
		case h.Sum != pl.Sum:
			add(what, modString(h)+" "+show(h.Sum), modString(pl)+" "+show(pl.Sum),
				"same version with different content (a replace or go.sum differs): build the plugin from the host's source tree with pcompile")
		default:
			add(what, modString(h), modString(pl), "")
		}
	}
	return out
}

// effective follows a replacement.
func effective(m *debug.Module) *debug.Module {
	if m.Replace != nil {
		return m.Replace
	}
	return m
}

func modString(m *debug.Module) string {
	if m.Version == "" { // a directory replacement
		return m.Path
	}
	return m.Version
}

func goFix(v string) string {
	v, _, _ = strings.Cut(v, " ") // drop " X:experiment"
	return fmt.Sprintf("build the plugin with the host's toolchain (GOTOOLCHAIN=%s pcompile ...), or rebuild the host with the plugin's", v)
}

// Compare reports every difference between the host's and a plugin's build
// info that makes plugin.Open fail: the Go version, the build settings in
// Settings, and the version and h1 sum of every module present in both
// dependency lists (after following replacements). No result means
// compatible as far as build info can tell.
func Compare(host, plugin *debug.BuildInfo) []Mismatch {
	var out []Mismatch
	for _, c := range Checks(host, plugin) {
		if !c.OK {
			out = append(out, c.Mismatch)
		}
	}
	return out
}

// BuildModeCheck reports whether bi was built with -buildmode=plugin.
func BuildModeCheck(bi *debug.BuildInfo) Check {
	mode := Setting(bi, "-buildmode")
	return Check{OK: mode == "plugin", Mismatch: Mismatch{What: "-buildmode", Host: "plugin", Plugin: mode,
		Fix: "this is not a Go plugin: build it with pcompile (go build -buildmode=plugin)"}}
}

// ReadFile reads a plugin file's build info. Its errors say what the file
// is instead: not an ELF file, a truncated or corrupt ELF file, or an ELF
// file that is not a Go binary.
func ReadFile(path string) (*debug.BuildInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte(elf.ELFMAG)) {
		return nil, fmt.Errorf("%s: not an ELF file (not a Go plugin)", path)
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: truncated or corrupt ELF file: %w", path, err)
	}
	if err := checkExtent(ef, st.Size()); err != nil {
		return nil, fmt.Errorf("%s: truncated ELF file: %w", path, err)
	}
	bi, err := buildinfo.Read(f)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%s: truncated ELF file: %w", path, err)
		}
		return nil, fmt.Errorf("%s: not a Go binary (no Go build info): %w", path, err)
	}
	return bi, nil
}

// checkExtent fails when a section or segment reaches past the end of the
// file, which is what a partly written or cut-off file looks like.
func checkExtent(ef *elf.File, size int64) error {
	for _, p := range ef.Progs {
		if end := int64(p.Off) + int64(p.Filesz); end > size {
			return fmt.Errorf("segment at offset %d needs %d bytes, file has %d", p.Off, end, size)
		}
	}
	for _, s := range ef.Sections {
		if s.Type == elf.SHT_NOBITS || s.Type == elf.SHT_NULL {
			continue
		}
		if end := int64(s.Offset) + int64(s.FileSize); end > size {
			return fmt.Errorf("section %s needs %d bytes, file has %d", s.Name, end, size)
		}
	}
	return nil
}

// CheckFile reads the build info of the plugin file at path and compares it
// with host's. A file that was not built with -buildmode=plugin gives a
// "-buildmode" mismatch first. A file that is not a Go binary, not an ELF
// file, or truncated gives an error that says so.
func CheckFile(path string, host *debug.BuildInfo) ([]Mismatch, error) {
	bi, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []Mismatch
	if c := BuildModeCheck(bi); !c.OK {
		out = append(out, c.Mismatch)
	}
	return append(out, Compare(host, bi)...), nil
}

// HostBuildInfo returns the running binary's build info
// (runtime/debug.ReadBuildInfo), or an error if it has none.
func HostBuildInfo() (*debug.BuildInfo, error) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, errors.New("this binary has no Go build info (built without module support?)")
	}
	return bi, nil
}

// pkgHashPrefix names the 8-byte fingerprint the linker stores for every
// package in a binary that can use plugins (and in every plugin). It is what
// plugin.Open compares ("plugin was built with a different version of
// package P"), and it sits in the dynamic symbol table, so stripped binaries
// keep it.
const pkgHashPrefix = "go:link.pkghashbytes."

// PackageHashes reads the per-package fingerprints of a host binary that
// imports "plugin", or of a plugin. A binary that cannot use plugins has
// none (an empty map).
func PackageHashes(path string) (map[string]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("%s: dynamic symbols: %w", path, err)
	}
	out := map[string]string{}
	for _, s := range syms {
		pkg, ok := strings.CutPrefix(s.Name, pkgHashPrefix)
		if !ok || s.Size == 0 || s.Size > 64 || int(s.Section) >= len(f.Sections) {
			continue
		}
		sect := f.Sections[s.Section]
		if s.Value < sect.Addr || sect.Type == elf.SHT_NOBITS {
			continue
		}
		buf := make([]byte, s.Size)
		if _, err := sect.ReadAt(buf, int64(s.Value-sect.Addr)); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, s.Name, err)
		}
		out[pkg] = fmt.Sprintf("%x", buf)
	}
	return out, nil
}

// ComparePackages compares the fingerprints of every package that both the
// host binary and the plugin file contain: the check plugin.Open makes,
// done without loading anything. Unlike build info it also catches a host
// built from other source of a shared package (an edited SDK, a replaced
// module). checked is the number of packages compared; 0 means the host
// cannot use plugins (it does not import "plugin") or is not readable that
// way, and nothing was proved.
func ComparePackages(hostPath, pluginPath string) (ms []Mismatch, checked int, err error) {
	h, err := PackageHashes(hostPath)
	if err != nil {
		return nil, 0, fmt.Errorf("host: %w", err)
	}
	return ComparePackageHashes(h, pluginPath)
}

// ComparePackageHashes is ComparePackages with the host's fingerprints
// already read (a long-running host reads its own once).
func ComparePackageHashes(host map[string]string, pluginPath string) (ms []Mismatch, checked int, err error) {
	p, err := PackageHashes(pluginPath)
	if err != nil {
		return nil, 0, fmt.Errorf("plugin: %w", err)
	}
	var pkgs []string
	for pkg := range p {
		if _, ok := host[pkg]; ok {
			pkgs = append(pkgs, pkg)
		}
	}
	sort.Strings(pkgs)
	for _, pkg := range pkgs {
		if host[pkg] != p[pkg] {
			ms = append(ms, Mismatch{What: "package " + pkg, Host: host[pkg], Plugin: p[pkg],
				Fix: "host and plugin were compiled from different source or settings for this package: build both from the same tree (make build, or pcompile -src <the host's source tree>)"})
		}
	}
	return ms, len(pkgs), nil
}
