package proxy

import (
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics keeps hot-path counters as plain atomics (no label lookups per
// request) and turns them into Prometheus metrics when scraped.
type metrics struct {
	g        *Gateway
	reg      *prometheus.Registry
	latency  *prometheus.HistogramVec
	unrouted atomic.Uint64
	mu       sync.Mutex
	bySvc    map[string]*svcMetrics
}

type svcMetrics struct {
	codes    [600]atomic.Uint64
	limited  atomic.Uint64
	rejected atomic.Uint64
	retries  atomic.Uint64
	latency  prometheus.Observer
}

func (m *svcMetrics) observe(status int, d time.Duration) {
	if status == 0 {
		status = http.StatusOK
	}
	if status > 0 && status < len(m.codes) {
		m.codes[status].Add(1)
	}
	m.latency.Observe(d.Seconds())
}

var (
	descRequests = prometheus.NewDesc("gateway_requests_total",
		"Requests answered, by service and status code.", []string{"service", "code"}, nil)
	descUnrouted = prometheus.NewDesc("gateway_unrouted_requests_total",
		"Requests for no known service.", nil, nil)
	descLimited = prometheus.NewDesc("gateway_rate_limited_total",
		"Requests refused by the service's rate limiter.", []string{"service"}, nil)
	descRejected = prometheus.NewDesc("gateway_program_rejections_total",
		"Requests rejected by the service's programs.", []string{"service"}, nil)
	descRetries = prometheus.NewDesc("gateway_retries_total",
		"Upstream attempts retried on another instance.", []string{"service"}, nil)
	descBreaker = prometheus.NewDesc("gateway_upstream_breaker_state",
		"Breaker state per instance: 0 closed, 1 half-open, 2 open.", []string{"service", "instance"}, nil)
	descInflight = prometheus.NewDesc("gateway_upstream_inflight",
		"Requests in flight per instance.", []string{"service", "instance"}, nil)
	descHealthy = prometheus.NewDesc("gateway_upstream_healthy",
		"Health-check verdict per instance (1 healthy).", []string{"service", "instance"}, nil)
)

func newMetrics(g *Gateway) *metrics {
	m := &metrics{g: g, reg: prometheus.NewRegistry(), bySvc: map[string]*svcMetrics{}}
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "gateway_request_duration_seconds",
		Help:    "Time from routing to the end of the response, by service.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"service"})
	m.reg.MustRegister(m.latency, m)
	return m
}

func (m *metrics) forService(name string) *svcMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.bySvc[name]; ok {
		return s
	}
	s := &svcMetrics{latency: m.latency.WithLabelValues(name)}
	m.bySvc[name] = s
	return s
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Describe and Collect make metrics a prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descUnrouted, descLimited, descRejected,
		descRetries, descBreaker, descInflight, descHealthy} {
		ch <- d
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descUnrouted, prometheus.CounterValue, float64(m.unrouted.Load()))
	m.mu.Lock()
	svcs := make(map[string]*svcMetrics, len(m.bySvc))
	for k, v := range m.bySvc {
		svcs[k] = v
	}
	m.mu.Unlock()
	for name, s := range svcs {
		for code := range s.codes {
			if n := s.codes[code].Load(); n > 0 {
				ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(n), name, strconv.Itoa(code))
			}
		}
		ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(s.limited.Load()), name)
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(s.rejected.Load()), name)
		ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(s.retries.Load()), name)
	}
	for name, s := range *m.g.services.Load() {
		for _, u := range s.load().ups {
			st := 0.0
			if b := u.br.Load(); b != nil {
				st = float64(b.State())
			}
			ch <- prometheus.MustNewConstMetric(descBreaker, prometheus.GaugeValue, st, name, u.Inst.ID)
			ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(u.Load()), name, u.Inst.ID)
			h := 0.0
			if u.Healthy() {
				h = 1
			}
			ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, h, name, u.Inst.ID)
		}
	}
}
