package main

import (
	"fmt"
	"io"

	"github.com/plugd/plugd/internal/compat"
)

// maxPackageLines bounds the [KO] package lines: a toolchain or setting
// mismatch makes every shared package differ.
const maxPackageLines = 10

// checkReport prints a KrakenD check-plugin style report of file against
// the host binary: one [OK]/[KO] line per compared item, then the fixes.
// It returns 0 when everything matches, 1 on a mismatch, 2 when the plugin
// or the host cannot be read.
func checkReport(file, hostBin string, stdout, stderr io.Writer) int {
	host, err := compat.ReadFile(hostBin)
	if err != nil {
		fmt.Fprintln(stderr, "pcompile check: host binary:", err)
		return 2
	}
	plugin, err := compat.ReadFile(file)
	if err != nil {
		fmt.Fprintln(stderr, "pcompile check:", err)
		return 2
	}
	fmt.Fprintf(stdout, "plugin %s (%s)\nhost   %s (%s)\n", file, plugin.Path, hostBin, host.Path)
	checks := append([]compat.Check{compat.BuildModeCheck(plugin)}, compat.Checks(host, plugin)...)
	var bad []compat.Check
	for _, c := range checks {
		if c.OK {
			v := c.Host
			if v == "" {
				v = "(none)"
			}
			fmt.Fprintf(stdout, "[OK] %s: %s\n", c.What, v)
			continue
		}
		bad = append(bad, c)
		if c.What == "-buildmode" {
			fmt.Fprintf(stdout, "[KO] -buildmode: want plugin, file has %s\n", c.Plugin)
			continue
		}
		m := c.Mismatch
		m.Fix = "" // fixes are listed at the end
		fmt.Fprintf(stdout, "[KO] %s\n", m)
	}
	pms, checked, err := compat.ComparePackages(hostBin, file)
	switch {
	case err != nil:
		fmt.Fprintf(stdout, "[KO] packages: cannot compare: %v\n", err)
		bad = append(bad, compat.Check{Mismatch: compat.Mismatch{What: "packages", Fix: err.Error()}})
	case len(pms) > 0:
		for i, m := range pms {
			if i == maxPackageLines {
				fmt.Fprintf(stdout, "[KO] ... and %d more packages\n", len(pms)-i)
				break
			}
			m.Fix = ""
			fmt.Fprintf(stdout, "[KO] %s\n", m)
		}
		bad = append(bad, compat.Check{Mismatch: compat.Mismatch{
			What: fmt.Sprintf("packages (%d of %d shared differ)", len(pms), checked), Fix: pms[0].Fix}})
	case checked == 0:
		fmt.Fprintf(stdout, "[??] packages: the host has no package fingerprints (does it import \"plugin\"?): not compared\n")
	default:
		fmt.Fprintf(stdout, "[OK] packages: %d shared packages have the same fingerprint\n", checked)
	}
	if len(bad) == 0 {
		if checked > 0 {
			checks = append(checks, compat.Check{OK: true})
		}
		fmt.Fprintf(stdout, "compatible: %d checks passed (plugin.Open stays the final test: plugd check %s)\n", len(checks), file)
		return 0
	}
	fmt.Fprintf(stdout, "%d mismatch(es). Fixes:\n", len(bad))
	fixes := map[string]bool{}
	for _, c := range bad {
		if c.Fix != "" && !fixes[c.Fix] {
			fixes[c.Fix] = true
			fmt.Fprintf(stdout, "  %s: %s\n", c.What, c.Fix)
		}
	}
	return 1
}
