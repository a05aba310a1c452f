// Package metrics defines wxlogin's Prometheus metrics: the edge's, the
// worker's and the NATS connection's. Labels are bounded: appids are the
// configured ones (anything else counts as "other"), kinds come from the
// contract, errcodes from WeChat's known table; never a code or an openid.
//
// Each binary builds one registry and hands it to its pieces; nothing
// registers globally, so several workers can run in one test process.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves reg in the Prometheus text format.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// Latency buckets from 1ms to 10s: WeChat answers in tens of ms, budgets
// are seconds.
var buckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Edge holds the edge's metrics.
type Edge struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// NewEdge registers the edge's metrics on reg.
func NewEdge(reg prometheus.Registerer) *Edge {
	e := &Edge{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_edge_requests_total",
			Help: "HTTP requests for openids by outcome: ok or an error kind.",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxlogin_edge_request_duration_seconds", Buckets: buckets,
			Help: "End-to-end latency of HTTP requests for openids, by outcome.",
		}, []string{"outcome"}),
	}
	reg.MustRegister(e.requests, e.latency)
	return e
}

// Request records one HTTP request.
func (e *Edge) Request(outcome string, seconds float64) {
	if e == nil {
		return
	}
	e.requests.WithLabelValues(outcome).Inc()
	e.latency.WithLabelValues(outcome).Observe(seconds)
}

// Worker holds the worker's metrics.
type Worker struct {
	apps           map[string]bool
	requests       *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	attempts       *prometheus.HistogramVec
	upstream       *prometheus.CounterVec
	retries        *prometheus.CounterVec
	rateWaits      *prometheus.HistogramVec
	rateRejections *prometheus.CounterVec
	dedup          *prometheus.CounterVec
}

// NewWorker registers the worker's metrics on reg. rates reports each
// appid's effective pool rate (nil when unlimited).
// inFlight reports the exchanges in flight, read when scraped.
func NewWorker(reg prometheus.Registerer, appids []string, rates func() map[string]float64, inFlight func() float64) *Worker {
	w := &Worker{
		apps: map[string]bool{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_worker_requests_total",
			Help: "Exchanges by appid and outcome: ok or an error kind.",
		}, []string{"appid", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxlogin_worker_exchange_duration_seconds", Buckets: buckets,
			Help: "Latency of whole exchanges (waits, attempts, retries), by appid.",
		}, []string{"appid"}),
		attempts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxlogin_upstream_attempt_duration_seconds", Buckets: buckets,
			Help: "Latency of single calls to WeChat, by appid.",
		}, []string{"appid"}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_upstream_calls_total",
			Help: "Calls to WeChat by appid and errcode (0 success, -1 busy, 'transport' for HTTP and network failures).",
		}, []string{"appid", "errcode"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_upstream_retries_total",
			Help: "Retried calls to WeChat, by appid.",
		}, []string{"appid"}),
		rateWaits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wxlogin_ratelimit_wait_seconds", Buckets: buckets,
			Help: "Time calls waited for a rate-limit slot, by appid.",
		}, []string{"appid"}),
		rateRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_ratelimit_rejections_total",
			Help: "Exchanges refused because no rate-limit slot came within the deadline or queue bound.",
		}, []string{"appid"}),
		dedup: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_dedup_answers_total",
			Help: "Answers given without calling WeChat, by where they came from.",
		}, []string{"source"}),
	}
	inFlightGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wxlogin_worker_in_flight",
		Help: "Exchanges in flight on this worker.",
	}, inFlight)
	for _, id := range appids {
		w.apps[id] = true
	}
	reg.MustRegister(w.requests, w.latency, w.attempts, w.upstream, w.retries, w.rateWaits, w.rateRejections, w.dedup, inFlightGauge)
	if rates != nil {
		reg.MustRegister(&rateCollector{rates: rates, desc: prometheus.NewDesc(
			"wxlogin_ratelimit_effective_rate", "The pool's current effective upstream rate per appid (calls/s), after adaptive backoff.",
			[]string{"appid"}, nil)})
	}
	return w
}

// app bounds the appid label to configured apps.
func (w *Worker) app(appid string) string {
	if w.apps[appid] {
		return appid
	}
	return "other"
}

// Exchange records a finished exchange.
func (w *Worker) Exchange(appid, outcome string, seconds float64) {
	if w == nil {
		return
	}
	a := w.app(appid)
	w.requests.WithLabelValues(a, outcome).Inc()
	w.latency.WithLabelValues(a).Observe(seconds)
}

// Attempt records one call to WeChat; errcode is 0 for success and
// transport for a failure without an errcode.
func (w *Worker) Attempt(appid string, errcode int, transport bool, seconds float64) {
	if w == nil {
		return
	}
	a := w.app(appid)
	w.attempts.WithLabelValues(a).Observe(seconds)
	w.upstream.WithLabelValues(a, errcodeLabel(errcode, transport)).Inc()
}

// Retry records a retried call.
func (w *Worker) Retry(appid string) {
	if w != nil {
		w.retries.WithLabelValues(w.app(appid)).Inc()
	}
}

// RateWait records a wait for a slot, or a refusal.
func (w *Worker) RateWait(appid string, seconds float64, refused bool) {
	if w == nil {
		return
	}
	a := w.app(appid)
	if refused {
		w.rateRejections.WithLabelValues(a).Inc()
		return
	}
	w.rateWaits.WithLabelValues(a).Observe(seconds)
}

// Deduplicated records an answer that did not call WeChat.
func (w *Worker) Deduplicated(source string) {
	if w != nil {
		w.dedup.WithLabelValues(source).Inc()
	}
}

// known errcodes get their own label value; any other is "other".
var known = map[int]bool{0: true, -1: true, 40029: true, 40163: true, 40226: true, 45011: true, 40013: true, 40125: true}

func errcodeLabel(code int, transport bool) string {
	switch {
	case transport:
		return "transport"
	case known[code]:
		return strconv.Itoa(code)
	}
	return "other"
}

type rateCollector struct {
	rates func() map[string]float64
	desc  *prometheus.Desc
}

func (c *rateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *rateCollector) Collect(ch chan<- prometheus.Metric) {
	for appid, r := range c.rates() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, r, appid)
	}
}

// Modes registers how far the worker's pool-wide features reach: 1 when
// shared through JetStream, 0 when per worker only (JetStream off or not
// reachable yet).
func Modes(reg prometheus.Registerer, dedupShared, rateShared func() bool) {
	gauge := func(name, help string, f func() bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			if f() {
				return 1
			}
			return 0
		})
	}
	reg.MustRegister(
		gauge("wxlogin_dedup_shared", "1 while de-duplication spans the pool (JetStream); 0 while it holds per worker only.", dedupShared),
		gauge("wxlogin_ratelimit_shared", "1 while WX_RATE is kept pool-wide (JetStream); 0 while each worker takes a share.", rateShared),
	)
}

// NATS registers the state of a connection: connected (1/0) and
// reconnects so far, labelled by the component's name.
func NATS(reg prometheus.Registerer, component string, nc *nats.Conn) {
	labels := prometheus.Labels{"component": component}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wxlogin_nats_connected", ConstLabels: labels,
			Help: "1 while the component's NATS connection is up.",
		}, func() float64 {
			if nc.IsConnected() {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "wxlogin_nats_reconnects_total", ConstLabels: labels,
			Help: "Times the component's NATS connection reconnected.",
		}, func() float64 { return float64(nc.Stats().Reconnects) }),
	)
}

// Stores counts what the workers' key-value buckets refused them: values
// read back that failed their check (forged, moved, written under old
// keys, unparsable or out of range), and records not stored (a full or
// unreachable bucket). The bucket label takes the configured buckets'
// names only. Its methods do nothing on a nil Stores.
type Stores struct {
	rejected, unstored *prometheus.CounterVec
}

// NewStores registers the stores' metrics on reg.
func NewStores(reg prometheus.Registerer) *Stores {
	s := &Stores{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_store_rejected_total",
			Help: "Values read from a key-value bucket that failed their authenticity check, did not parse or were out of range, and were treated as absent.",
		}, []string{"bucket"}),
		unstored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxlogin_store_unstored_total",
			Help: "Records a worker could not write to a key-value bucket (full or unreachable); the login was served without them.",
		}, []string{"bucket"}),
	}
	reg.MustRegister(s.rejected, s.unstored)
	return s
}

// Rejected counts a value of bucket treated as absent.
func (s *Stores) Rejected(bucket string) {
	if s != nil {
		s.rejected.WithLabelValues(bucket).Inc()
	}
}

// Unstored counts a record bucket did not take.
func (s *Stores) Unstored(bucket string) {
	if s != nil {
		s.unstored.WithLabelValues(bucket).Inc()
	}
}
