package edge

import (
	"container/list"
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
	// TrustProxy takes the client from X-Forwarded-For instead of the
	// connection's peer (EDGE_TRUST_PROXY): the right-most address of the
	// chain (the header's hops, then the peer) that is not in
	// TrustedProxies. A client can write any hops it likes at the left of
	// the header, but not the ones its proxies append to the right, so
	// only those are believed. A request straight from an untrusted peer
	// is counted under the peer, whatever its header says.
	TrustProxy bool
	// TrustedProxies are the proxies' networks (EDGE_TRUSTED_PROXIES).
	TrustedProxies []netip.Prefix
	// MaxClients bounds the clients remembered (see clientLimiter); 0
	// means DefaultMaxClients.
	MaxClients int
}

// DefaultMaxClients bounds the per-client state to 100,000 buckets,
// some 20 MB at worst.
const DefaultMaxClients = 100_000

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
			key := clientKey(r, cl.TrustProxy, cl.TrustedProxies)
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

// clientLimiter holds one token bucket per client key, in bounded memory:
// the buckets in least-recently-used order, at most max of them. A new
// client past the bound evicts the one unseen for longest, one at a time,
// so a flood of new addresses forgets the quietest clients rather than
// handing every client a fresh bucket at once. A bucket unused for its
// refill time is full again, so forgetting it changes nothing for its
// client: such buckets are dropped as they are met at the old end, and
// memory shrinks back after a flood. Nothing runs in the background, so
// there is nothing to stop.
type clientLimiter struct {
	limit  rate.Limit
	burst  int
	refill time.Duration
	max    int

	mu      sync.Mutex
	clients map[netip.Prefix]*list.Element
	lru     list.List // of *clientBucket, most recently used at the front
}

type clientBucket struct {
	key  netip.Prefix
	lim  *rate.Limiter
	seen time.Time
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
	return &clientLimiter{
		limit:   rate.Limit(cl.Rate),
		burst:   burst,
		refill:  time.Duration(float64(burst) / cl.Rate * float64(time.Second)),
		max:     maxClients,
		clients: map[netip.Prefix]*list.Element{},
	}
}

// allow takes a token of key's bucket at now, or reports how long until
// one is free.
func (c *clientLimiter) allow(key netip.Prefix, now time.Time) (time.Duration, bool) {
	c.mu.Lock()
	// Drop up to two full buckets per call: the work stays constant and
	// still outpaces the one bucket a call may add.
	for range 2 {
		old := c.lru.Back()
		if old == nil || now.Sub(old.Value.(*clientBucket).seen) < c.refill {
			break
		}
		c.remove(old)
	}
	var b *clientBucket
	if el, ok := c.clients[key]; ok {
		c.lru.MoveToFront(el)
		b = el.Value.(*clientBucket)
	} else {
		if len(c.clients) >= c.max {
			c.remove(c.lru.Back())
		}
		b = &clientBucket{key: key, lim: rate.NewLimiter(c.limit, c.burst)}
		c.clients[key] = c.lru.PushFront(b)
	}
	b.seen = now
	c.mu.Unlock()

	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		// Refused requests spend nothing: a client that keeps knocking
		// is still served at its rate.
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

func (c *clientLimiter) remove(el *list.Element) {
	delete(c.clients, el.Value.(*clientBucket).key)
	c.lru.Remove(el)
}

// size is the number of clients remembered, for tests.
func (c *clientLimiter) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.clients)
}

// clientKey is the bucket a request counts against: the client's IPv4
// address, or the /64 of its IPv6 address, since one IPv6 subscriber
// usually holds a whole /64 and could otherwise rotate addresses in it.
// A peer that cannot be parsed (not TCP) gets the zero key, one bucket
// shared by all such requests: limiting them together is safer than not
// limiting them at all.
func clientKey(r *http.Request, trustProxy bool, trusted []netip.Prefix) netip.Prefix {
	peer, ok := peerAddr(r.RemoteAddr)
	if !ok {
		return netip.Prefix{}
	}
	if trustProxy {
		return keyOf(forwardedClient(peer, r.Header.Values("X-Forwarded-For"), trusted))
	}
	return keyOf(peer)
}

func peerAddr(remote string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	return a, err == nil
}

// forwardedClient walks the chain from the peer leftwards through the
// X-Forwarded-For hops (several headers read as one list, in order) and
// returns the first address that is not a trusted proxy. When every hop
// is trusted, the left-most is the client (a caller inside the trusted
// networks). A hop that does not parse, met before the client is found,
// means the chain cannot be read: the request counts under the peer, as
// if there were no header.
func forwardedClient(peer netip.Addr, values []string, trusted []netip.Prefix) netip.Addr {
	if !isTrusted(peer, trusted) {
		return peer
	}
	var hops []string
	for _, v := range values {
		hops = append(hops, strings.Split(v, ",")...)
	}
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, ok := parseHop(hops[i])
		if !ok {
			return peer
		}
		client = a
		if !isTrusted(a, trusted) {
			break
		}
	}
	return client
}

// parseHop parses one hop: a bare IP, or an IP with a port as some
// proxies write it ("1.2.3.4:5678", "[2001:db8::1]:5678").
func parseHop(hop string) (netip.Addr, bool) {
	hop = strings.TrimSpace(hop)
	if a, err := netip.ParseAddr(hop); err == nil {
		return a, true
	}
	if ap, err := netip.ParseAddrPort(hop); err == nil {
		return ap.Addr(), true
	}
	return netip.Addr{}, false
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	a = a.Unmap().WithZone("")
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
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
