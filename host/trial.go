package main

import (
	"strings"

	"github.com/plugd/plugd/host/internal/loader"
	"github.com/plugd/plugd/internal/compat"
)

// trialLoad runs every check on path in this process.
func trialLoad(path string) loader.TrialResult {
	host, err := compat.HostBuildInfo()
	if err != nil {
		return loader.TrialResult{Reason: err.Error()}
	}
	mm, err := compat.CheckFile(path, host)
	if err != nil {
		return loader.TrialResult{Reason: err.Error()}
	}
	if len(mm) > 0 {
		reasons := make([]string, len(mm))
		for i, m := range mm {
			reasons[i] = m.String()
		}
		return loader.TrialResult{Reason: "not built for this host: " + strings.Join(reasons, "; ")}
	}
	d, err := loader.Open(path)
	if err != nil {
		return loader.TrialResult{Reason: err.Error()}
	}
	return loader.TrialResult{OK: true, Name: d.Name, Version: d.Version, API: d.NewAPI != nil, SLP: d.NewSLP != nil}
}
