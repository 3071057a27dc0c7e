// Package metrics exposes provisiond's Prometheus metrics: enrollments by
// transport and result with their latency, revocations, leases in use per
// site and connected devices.
package metrics

import (
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/provisiond/provisiond/internal/handshake"
)

// Sources are the functions the gauges read at scrape time.
type Sources struct {
	LeasesInUse  func() (map[string]int, error) // per site
	DTLSSessions func() int                     // mutual-DTLS device sessions
	MQTTSessions func() int                     // MQTT device sessions (embedded broker)
	// Handshakes reports each listener's handshake gate by transport
	// ("coaps", "mqtts"): slots in use, sessions waiting for one, and
	// sessions dropped since start.
	Handshakes func() map[string]handshake.Stats
}

// Metrics holds the registry and the instruments the service updates.
type Metrics struct {
	reg         *prometheus.Registry
	enrollments *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	revocations prometheus.Counter
}

// New registers every metric.
func New(src Sources, log *slog.Logger) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provisiond_enrollments_total",
			Help: "Enrollment requests by transport and result (the CoAP code: 2.01 enrolled, 4.01 unauthorized, ...).",
		}, []string{"transport", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "provisiond_enrollment_duration_seconds",
			Help:    "Server-side time to handle an enrollment request, by transport.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"transport"}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provisiond_revocations_total", Help: "Devices revoked.",
		}),
	}
	m.reg.MustRegister(m.enrollments, m.latency, m.revocations,
		collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.GoRuntimeMetricsRule{
			// The heap the last collection found live, and the goroutine
			// stacks it scanned: what memory the service needs, apart from
			// the collector's headroom (go_gc_heap_live_bytes,
			// go_gc_scan_stack_bytes).
			Matcher: regexp.MustCompile(`^/gc/(heap/live|scan/stack):bytes$`),
		})),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(&leases{src: src.LeasesInUse, log: log,
		desc: prometheus.NewDesc("provisiond_leases_in_use", "Unexpired IP leases per site.", []string{"site"}, nil)})
	sessions := prometheus.NewDesc("provisiond_connected_devices", "Devices with a live session, by transport.", []string{"transport"}, nil)
	m.reg.MustRegister(collectorFunc(func(ch chan<- prometheus.Metric) {
		if src.DTLSSessions != nil {
			ch <- prometheus.MustNewConstMetric(sessions, prometheus.GaugeValue, float64(src.DTLSSessions()), "coaps")
		}
		if src.MQTTSessions != nil {
			ch <- prometheus.MustNewConstMetric(sessions, prometheus.GaugeValue, float64(src.MQTTSessions()), "mqtt")
		}
	}, sessions))
	if src.Handshakes != nil {
		labels := []string{"transport"}
		inProgress := prometheus.NewDesc("provisiond_handshakes_in_progress", "Handshake slots in use (handshakes, and bootstrap sessions not yet answered), by transport.", labels, nil)
		waiting := prometheus.NewDesc("provisiond_handshakes_waiting", "Sessions waiting for a handshake slot, by transport.", labels, nil)
		dropped := prometheus.NewDesc("provisiond_handshakes_dropped_total", "Sessions dropped after waiting too long for a handshake slot, by transport.", labels, nil)
		m.reg.MustRegister(collectorFunc(func(ch chan<- prometheus.Metric) {
			for tr, st := range src.Handshakes() {
				ch <- prometheus.MustNewConstMetric(inProgress, prometheus.GaugeValue, float64(st.InProgress), tr)
				ch <- prometheus.MustNewConstMetric(waiting, prometheus.GaugeValue, float64(st.Waiting), tr)
				ch <- prometheus.MustNewConstMetric(dropped, prometheus.CounterValue, float64(st.Dropped), tr)
			}
		}, inProgress, waiting, dropped))
	}
	return m
}

// ObserveEnroll records one enrollment request.
func (m *Metrics) ObserveEnroll(transport, result string, d time.Duration) {
	m.enrollments.WithLabelValues(transport, result).Inc()
	m.latency.WithLabelValues(transport).Observe(d.Seconds())
}

// Revoked counts revoked devices.
func (m *Metrics) Revoked(n int) { m.revocations.Add(float64(n)) }

// Handler serves the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// leases reports leases in use per site. Counting them reads every lease
// (about 0.5 s for a million), so a count is reused for leasesMaxAge.
type leases struct {
	src  func() (map[string]int, error)
	desc *prometheus.Desc
	log  *slog.Logger

	mu   sync.Mutex
	at   time.Time
	last map[string]int
}

const leasesMaxAge = 30 * time.Second

func (l *leases) Describe(ch chan<- *prometheus.Desc) { ch <- l.desc }

func (l *leases) Collect(ch chan<- prometheus.Metric) {
	if l.src == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil || time.Since(l.at) > leasesMaxAge {
		per, err := l.src()
		if err != nil {
			l.log.Warn("metrics: leases in use", "err", err)
			return
		}
		l.last, l.at = per, time.Now()
	}
	for site, n := range l.last {
		ch <- prometheus.MustNewConstMetric(l.desc, prometheus.GaugeValue, float64(n), site)
	}
}

type funcCollector struct {
	collect func(chan<- prometheus.Metric)
	descs   []*prometheus.Desc
}

func collectorFunc(collect func(chan<- prometheus.Metric), descs ...*prometheus.Desc) prometheus.Collector {
	return &funcCollector{collect: collect, descs: descs}
}

func (f *funcCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range f.descs {
		ch <- d
	}
}

func (f *funcCollector) Collect(ch chan<- prometheus.Metric) { f.collect(ch) }
