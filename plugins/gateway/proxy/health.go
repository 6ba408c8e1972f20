package proxy

import (
	"context"
	"net/http"
	"time"

	"github.com/plugd/plugd/plugins/gateway/conf"
)

// RunHealthChecks probes the instances of every service with a health
// check until ctx ends: GET <scheme>://<address><path>, a 2xx/3xx answer
// within the timeout counts as success. An instance turns unhealthy after
// unhealthy_threshold failures in a row and healthy again after
// healthy_threshold successes.
func (g *Gateway) RunHealthChecks(ctx context.Context) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	next := map[string]time.Time{}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			for name, s := range *g.services.Load() {
				hc := s.hc.Load()
				if hc == nil || now.Before(next[name]) {
					continue
				}
				interval, _ := conf.Duration("interval", hc.Interval, 5*time.Second)
				if interval <= 0 {
					interval = 5 * time.Second
				}
				next[name] = now.Add(interval)
				g.checkService(ctx, client, s, hc)
			}
		}
	}
}

func (g *Gateway) checkService(ctx context.Context, client *http.Client, s *Service, hc *conf.HealthCheck) {
	timeout, _ := conf.Duration("timeout", hc.Timeout, 2*time.Second)
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	up, down := hc.HealthyThreshold, hc.UnhealthyThreshold
	if up <= 0 {
		up = 1
	}
	if down <= 0 {
		down = 1
	}
	sn := s.load()
	for _, u := range sn.ups {
		c, cancel := context.WithTimeout(ctx, timeout)
		req, err := http.NewRequestWithContext(c, http.MethodGet, sn.scheme+"://"+u.Inst.Address+hc.Path, nil)
		ok := false
		if err == nil {
			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
				ok = resp.StatusCode < 400
			}
		}
		cancel()
		if ok {
			u.failStreak = 0
			if u.okStreak++; u.okStreak >= up && !u.healthy.Load() {
				u.healthy.Store(true)
				g.opt.Logger.Infof("instance %s of %s is healthy again", u.Inst.ID, s.Name)
			}
		} else {
			u.okStreak = 0
			if u.failStreak++; u.failStreak >= down && u.healthy.Load() {
				u.healthy.Store(false)
				g.opt.Logger.Warnf("instance %s of %s failed %d health checks: unhealthy", u.Inst.ID, s.Name, u.failStreak)
			}
		}
	}
}
