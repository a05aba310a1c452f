package edge

import (
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

// ClientLimit is the per-client request limit of /v1/openid: a token
// bucket per client address, so that one client cannot spend the pool's
// WeChat quota (WX_RATE) on its own. The zero value turns it off.
type ClientLimit struct {
	// Rate is requests per second per client; 0 or less turns the limit
	// off (EDGE_CLIENT_RATE).
	Rate float64
	// Burst is how many requests a client may send at once above Rate;
	// 0 means one second's worth, at least 1 (EDGE_CLIENT_BURST).
	Burst int
	// TrustProxy takes the client from the first (leftmost) hop of
	// X-Forwarded-For instead of the connection's peer (EDGE_TRUST_PROXY).
	//
	// Only set it behind a proxy that overwrites X-Forwarded-For with the
	// address it saw. A proxy that appends to the header (nginx's
	// $proxy_add_x_forwarded_for, most cloud load balancers) passes on
	// whatever the client wrote first: a client can then name a new
	// address with every request and is never limited, or name someone
	// else's and get them limited. Without TrustProxy, behind any proxy,
	// every user shares the proxy's bucket.
	TrustProxy bool
	// MaxClients bounds the clients remembered per generation (see
	// clientLimiter); 0 means DefaultMaxClients.
	MaxClients int
}

// DefaultMaxClients bounds the per-client state to about 2×50,000
// buckets, some 20 MB at worst.
const DefaultMaxClients = 50_000

// minGeneration is the shortest time a client's bucket is remembered.
const minGeneration = 10 * time.Second

// limitClients returns the middleware that enforces cl, or one that
// changes nothing when cl is off. Over the limit, a client gets the
// contract's rate_limited error (429, retry same_code) with Retry-After.
func limitClients(cl ClientLimit, logger *slog.Logger) func(http.Handler) http.Handler {
	if !(cl.Rate > 0) {
		return func(next http.Handler) http.Handler { return next }
	}
	lim := newClientLimiter(cl)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key := clientKey(r, cl.TrustProxy)
			wait, ok := lim.allow(key, time.Now())
			if ok {
				next.ServeHTTP(w, r)
				return
			}
			writeError(w, protocol.Make(protocol.KindRateLimited, "too many requests from this client; retry after Retry-After seconds",
				protocol.RetryAfter(wait)))
			// Debug only: an abusive client must not be able to flood
			// the log at the default level.
			logger.LogAttrs(r.Context(), slog.LevelDebug, "client rate limited",
				slog.String("client", key.String()), slog.Duration("retry_after", wait))
		})
	}
}

// clientLimiter holds one token bucket per client key, in bounded memory.
//
// Buckets live in two generations, as in fakewx: cur holds the clients
// seen since genStart, prev those of the generation before. A client seen
// again while in prev moves to cur; when a generation ends, prev is
// dropped whole. A generation lasts at least the time an empty bucket
// takes to fill up again, so a dropped bucket was full anyway and
// forgetting it changes nothing for its client. A generation also ends
// early when cur holds MaxClients: then clients may be forgotten with
// part-spent buckets, which only happens while more than MaxClients
// addresses are active at once, and keeps memory bounded all the same.
// Nothing runs in the background, so there is nothing to stop.
type clientLimiter struct {
	limit rate.Limit
	burst int
	gen   time.Duration
	max   int

	mu       sync.Mutex
	cur      map[netip.Prefix]*rate.Limiter
	prev     map[netip.Prefix]*rate.Limiter
	genStart time.Time
}

func newClientLimiter(cl ClientLimit) *clientLimiter {
	burst := cl.Burst
	if burst <= 0 {
		burst = max(int(math.Ceil(cl.Rate)), 1)
	}
	maxClients := cl.MaxClients
	if maxClients <= 0 {
		maxClients = DefaultMaxClients
	}
	refill := time.Duration(float64(burst) / cl.Rate * float64(time.Second))
	return &clientLimiter{
		limit: rate.Limit(cl.Rate),
		burst: burst,
		gen:   max(refill, minGeneration),
		max:   maxClients,
		cur:   map[netip.Prefix]*rate.Limiter{},
		prev:  map[netip.Prefix]*rate.Limiter{},
	}
}

// allow takes a token of key's bucket at now, or reports how long until
// one is free.
func (c *clientLimiter) allow(key netip.Prefix, now time.Time) (time.Duration, bool) {
	c.mu.Lock()
	if age := now.Sub(c.genStart); age >= c.gen || len(c.cur) >= c.max {
		if age >= 2*c.gen {
			// Idle for a whole generation: cur's clients expired too.
			c.prev = map[netip.Prefix]*rate.Limiter{}
		} else {
			c.prev = c.cur
		}
		// A new map rather than clear(): a flood's peak-sized buckets
		// must not stay allocated for ever.
		c.cur = map[netip.Prefix]*rate.Limiter{}
		c.genStart = now
	}
	lim, ok := c.cur[key]
	if !ok {
		if lim, ok = c.prev[key]; ok {
			delete(c.prev, key)
		} else {
			lim = rate.NewLimiter(c.limit, c.burst)
		}
		c.cur[key] = lim
	}
	c.mu.Unlock()

	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		// Refused requests spend nothing: a client that keeps knocking
		// is still served at its rate.
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// size is the number of clients remembered, for tests.
func (c *clientLimiter) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.prev)
}

// clientKey is the bucket a request counts against: the client's IPv4
// address, or the /64 of its IPv6 address, since one IPv6 subscriber
// usually holds a whole /64 and could otherwise rotate addresses in it.
// A peer that cannot be parsed (not TCP) gets the zero key, one bucket
// shared by all such requests: limiting them together is safer than not
// limiting them at all.
func clientKey(r *http.Request, trustProxy bool) netip.Prefix {
	if trustProxy {
		if a, ok := firstForwarded(r.Header.Values("X-Forwarded-For")); ok {
			return keyOf(a)
		}
		// No usable header: the request did not come through the proxy
		// (or the proxy sent none); the peer is the best we know.
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}
	}
	return keyOf(a)
}

// firstForwarded parses the first hop of X-Forwarded-For, the address the
// first proxy saw: a bare IP, or an IP with a port as some proxies write
// it ("1.2.3.4:5678", "[2001:db8::1]:5678").
func firstForwarded(values []string) (netip.Addr, bool) {
	if len(values) == 0 {
		return netip.Addr{}, false
	}
	first, _, _ := strings.Cut(values[0], ",")
	first = strings.TrimSpace(first)
	if a, err := netip.ParseAddr(first); err == nil {
		return a, true
	}
	if ap, err := netip.ParseAddrPort(first); err == nil {
		return ap.Addr(), true
	}
	return netip.Addr{}, false
}

func keyOf(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits) // cannot fail: bits fits a's family
	return p
}
