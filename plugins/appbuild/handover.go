package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/plugd/plugd/sdk"
)

// Handing a running build over during a swap.
//
// The host starts the new instance before it stops the old one, in the same
// process. The old instance's Stop offers each build it runs or watches
// (handover/<id>); the new instance's dispatcher adopts it: it renews the
// lease, forwards cancel requests through the build's work dir (cancel
// file, SIGTERM to the recorded process group) and, when the old runner
// leaves outcome.json, records the result. The old runner's goroutine lives
// on after its Stop (Go never unloads plugin code) and touches only files
// from then on. With no adopter before the Stop deadline (unload, host
// shutdown) the build is stopped and failed with the reason.

type handoverEntry struct {
	Proc    string `json:"proc"`
	From    string `json:"from"`
	Adopter string `json:"adopter,omitempty"`
}

const handoverTTL = time.Minute

// adoptAndWatch adopts builds offered by a stopping instance of this
// process and watches adopted builds.
func (p *plugin) adoptAndWatch(ctx context.Context) error {
	kvs, err := p.store.List(ctx, kHandover)
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		var h handoverEntry
		if json.Unmarshal(kv.Value, &h) != nil || h.Adopter != "" || h.From == p.token || h.Proc != p.procID {
			continue
		}
		id := strings.TrimPrefix(kv.Key, kHandover)
		adopted := false
		err := p.store.Update(ctx, func(tx sdk.Tx) error {
			var cur handoverEntry
			if err := getJSON(tx, kv.Key, &cur); err != nil || cur.Adopter != "" {
				return err
			}
			cur.Adopter = p.token
			adopted = true
			if err := putJSON(tx, kLease+id, leaseEntry{Proc: p.procID}, sdk.WithTTL(leaseTTL)); err != nil {
				return err
			}
			return putJSON(tx, kv.Key, cur, sdk.WithTTL(handoverTTL))
		})
		if errors.Is(err, sdk.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if adopted {
			p.mu.Lock()
			p.adopted[id] = true
			p.mu.Unlock()
			p.h.Logger().WithField("build", id).Info("adopted a running build from the replaced instance")
		}
	}
	p.mu.Lock()
	ids := make([]string, 0, len(p.adopted))
	for id := range p.adopted {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		if err := p.watchAdopted(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func (p *plugin) dropAdopted(id string) {
	p.mu.Lock()
	delete(p.adopted, id)
	p.mu.Unlock()
}

func (p *plugin) watchAdopted(ctx context.Context, id string) error {
	b, err := p.getBuild(ctx, id)
	if err != nil {
		return err
	}
	if b.done() {
		p.dropAdopted(id)
		return nil
	}
	work := filepath.Join(p.workDir, id)
	if data, err := os.ReadFile(filepath.Join(work, outcomeFile)); err == nil {
		var o outcome
		if err := json.Unmarshal(data, &o); err != nil {
			o = outcome{Status: StatusFailed, Reason: "unreadable result from the replaced instance: " + err.Error(), Results: b.Results}
		}
		logPath := filepath.Join(p.logsDir, id+".log")
		if err := p.finish(ctx, id, func(nb *Build) { o.apply(nb, logPath) }); err != nil {
			return err
		}
		p.cleanWork(id)
		p.dropAdopted(id)
		return nil
	}
	if b.Cancel {
		cancelAdopted(work, "canceled on request")
	}
	return p.store.Put(ctx, kLease+id, mustJSON(leaseEntry{Proc: p.procID}), sdk.WithTTL(leaseTTL))
}

// cancelAdopted asks the runner of a handed-over build to stop and ends the
// recipe run in progress.
func cancelAdopted(work, reason string) {
	if _, err := os.Stat(filepath.Join(work, cancelFile)); err != nil {
		os.WriteFile(filepath.Join(work, cancelFile), []byte(reason), 0o644)
	}
	if b, err := os.ReadFile(filepath.Join(work, pgidFile)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(-pid, syscall.SIGTERM)
		}
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// handOver offers every build this instance runs or watches to the next
// instance and waits until ctx ends for each to be adopted or finished. It
// returns the ids nobody adopted.
func (p *plugin) handOver(ctx context.Context) []string {
	p.mu.Lock()
	var ids []string
	for id := range p.running {
		ids = append(ids, id)
	}
	for id := range p.adopted {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if !p.successorLive(ctx) {
		return ids // unload or shutdown: nobody to hand over to
	}
	offered := map[string]bool{}
	for _, id := range ids {
		err := p.store.Put(ctx, kHandover+id, mustJSON(handoverEntry{Proc: p.procID, From: p.token}), sdk.WithTTL(handoverTTL))
		if err == nil {
			offered[id] = true
		}
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for len(offered) > 0 {
		for id := range offered {
			if p.resolveOffer(ctx, id) {
				delete(offered, id)
			}
		}
		if len(offered) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			var left []string
			for id := range offered {
				p.store.Delete(context.Background(), kHandover+id)
				left = append(left, id)
			}
			return left
		case <-tick.C:
		}
	}
	return nil
}

// resolveOffer reports whether build id needs this instance no more:
// adopted (then its runner, if ours, is detached) or finished.
func (p *plugin) resolveOffer(ctx context.Context, id string) bool {
	p.mu.Lock()
	rb := p.running[id]
	p.mu.Unlock()
	if rb != nil {
		rb.mu.Lock()
		fin := rb.finished
		rb.mu.Unlock()
		if fin {
			p.store.Delete(ctx, kHandover+id)
			return true
		}
	}
	raw, err := p.store.Get(ctx, kHandover+id)
	if err != nil {
		return false
	}
	var h handoverEntry
	if json.Unmarshal(raw, &h) != nil || h.Adopter == "" {
		return false
	}
	if rb != nil {
		rb.mu.Lock()
		if !rb.finished {
			rb.detached = true
		}
		// If it finished (in the store) just before, the adopter sees
		// the build done and drops it.
		rb.mu.Unlock()
	}
	p.dropAdopted(id)
	p.store.Delete(ctx, kHandover+id)
	return true
}

// announce records this instance as live (renewed by the dispatcher), so a
// stopping instance knows whether a successor exists in this process.
func (p *plugin) announce(ctx context.Context) error {
	return p.store.Put(ctx, kInstance+p.token, mustJSON(leaseEntry{Proc: p.procID, Instance: p.token}), sdk.WithTTL(leaseTTL))
}

// successorLive reports whether another instance of this process is live.
func (p *plugin) successorLive(ctx context.Context) bool {
	kvs, err := p.store.List(ctx, kInstance)
	if err != nil {
		return true // cannot tell: offer and wait
	}
	for _, kv := range kvs {
		var l leaseEntry
		if json.Unmarshal(kv.Value, &l) == nil && l.Proc == p.procID && l.Instance != p.token {
			return true
		}
	}
	return false
}
