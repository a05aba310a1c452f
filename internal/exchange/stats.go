package exchange

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wxlogin/wxlogin/internal/dedup"
	"github.com/wxlogin/wxlogin/internal/metrics"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// stats are the worker's own figures. micro's built-in endpoint stats time
// the handler, which returns as soon as it has started the exchange's
// goroutine, so they say nothing about exchanges; these do.
type stats struct {
	requests      atomic.Int64
	ok            atomic.Int64
	upstreamCalls atomic.Int64
	retries       atomic.Int64
	rateLimited   atomic.Int64
	lostAnswers   atomic.Int64
	latencyNanos  atomic.Int64
	deduped       atomic.Int64
	byKind        map[protocol.Kind]*atomic.Int64 // fixed keys: no lock
	m             *metrics.Worker                 // nil without a registry; its methods allow that

	mu        sync.Mutex
	byErrcode map[int]int64
	lastError string
	lastErrAt time.Time
}

func newStats() *stats {
	s := &stats{byKind: map[protocol.Kind]*atomic.Int64{}, byErrcode: map[int]int64{}}
	for _, k := range protocol.Kinds {
		s.byKind[k] = new(atomic.Int64)
	}
	return s
}

func (s *stats) record(o outcome) {
	outcome := "ok"
	if o.err != nil {
		outcome = string(o.err.Kind)
	}
	s.m.Exchange(o.appid, outcome, o.latency.Seconds())
	s.requests.Add(1)
	s.latencyNanos.Add(int64(o.latency))
	if o.lost {
		s.lostAnswers.Add(1)
	}
	if o.err == nil {
		s.ok.Add(1)
	} else if c, ok := s.byKind[o.err.Kind]; ok {
		c.Add(1)
	}
	if o.err != nil {
		s.mu.Lock()
		s.lastError, s.lastErrAt = string(o.err.Kind)+": "+o.err.Message, time.Now()
		s.mu.Unlock()
	}
}

func (s *stats) dedupHit(src dedup.Source) {
	if src != dedup.FromUpstream {
		s.deduped.Add(1)
		s.m.Deduplicated(src.String())
	}
}

func (s *stats) upstreamError(errcode int) {
	if errcode == 0 {
		return
	}
	s.mu.Lock()
	s.byErrcode[errcode]++
	s.mu.Unlock()
}

// Stats is a snapshot of a worker's figures, served as the micro
// endpoint's stats data (nats micro stats wxlogin).
type Stats struct {
	Requests      int64              `json:"requests"`
	OK            int64              `json:"ok"`
	Errors        map[string]int64   `json:"errors"`
	InFlight      int64              `json:"in_flight"`
	UpstreamCalls int64              `json:"upstream_calls"`
	UpstreamCodes map[string]int64   `json:"upstream_errcodes"`
	Retries       int64              `json:"retries"`
	RateLimited   int64              `json:"rate_limited"`
	LostAnswers   int64              `json:"lost_answers"`
	Deduplicated  int64              `json:"deduplicated"`
	Dedup         string             `json:"dedup"`
	RateLimit     string             `json:"rate_limit"`
	EffectiveRate map[string]float64 `json:"effective_rate,omitempty"`
	WorkersKnown  int                `json:"workers_known,omitempty"`
	// RateSlotsMissed counts rate-limit slots let go because the worker
	// woke too late to use them (a stalled process): a sign of CPU
	// starvation, not of WeChat.
	RateSlotsMissed int64      `json:"rate_slots_missed,omitempty"`
	AvgLatency      string     `json:"average_latency"`
	LastError       string     `json:"last_error,omitempty"`
	LastErrorAt     *time.Time `json:"last_error_at,omitempty"`
}

// Stats returns the worker's figures so far.
func (w *Worker) Stats() Stats {
	s := w.stats
	out := Stats{
		Requests:      s.requests.Load(),
		OK:            s.ok.Load(),
		Errors:        map[string]int64{},
		InFlight:      int64(w.inFlight()),
		UpstreamCalls: s.upstreamCalls.Load(),
		UpstreamCodes: map[string]int64{},
		Retries:       s.retries.Load(),
		RateLimited:   s.rateLimited.Load(),
		LostAnswers:   s.lostAnswers.Load(),
		Deduplicated:  s.deduped.Load(),
		Dedup:         w.DedupMode(),
		RateLimit:     w.RateMode(),
	}
	if w.cfg.Rate > 0 {
		out.EffectiveRate = w.limit.Rates()
		out.WorkersKnown = w.limit.Peers()
		out.RateSlotsMissed = w.limit.Missed()
	}
	if out.Requests > 0 {
		out.AvgLatency = (time.Duration(s.latencyNanos.Load() / out.Requests)).String()
	}
	for k, c := range s.byKind {
		if n := c.Load(); n > 0 {
			out.Errors[string(k)] = n
		}
	}
	s.mu.Lock()
	for code, n := range s.byErrcode {
		out.UpstreamCodes[strconv.Itoa(code)] = n
	}
	if s.lastError != "" {
		out.LastError = s.lastError
		at := s.lastErrAt
		out.LastErrorAt = &at
	}
	s.mu.Unlock()
	return out
}
