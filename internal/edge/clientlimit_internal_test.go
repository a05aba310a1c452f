package edge

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestClientKey(t *testing.T) {
	t.Parallel()
	private := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("fd00::/8"),
	}
	for _, c := range []struct {
		name       string
		remote     string
		xff        []string
		trustProxy bool
		want       string
	}{
		{"ipv4 peer", "203.0.113.7:5000", nil, false, "203.0.113.7/32"},
		{"ipv6 peer is keyed by its /64", "[2001:db8:1:2:aaaa::1]:5000", nil, false, "2001:db8:1:2::/64"},
		{"ipv4-mapped ipv6 is ipv4", "[::ffff:203.0.113.7]:5000", nil, false, "203.0.113.7/32"},
		{"zone dropped", "[fe80::1%eth0]:5000", nil, false, "fe80::/64"},
		{"forwarded header ignored unless trusted", "10.0.0.1:5000", []string{"198.51.100.9"}, false, "10.0.0.1/32"},
		{"the hop the proxy appended", "10.0.0.1:5000", []string{"198.51.100.9"}, true, "198.51.100.9/32"},
		// The client wrote 192.0.2.66 itself; the proxy appended what it saw.
		{"a client-written left hop is not believed", "10.0.0.1:5000", []string{"192.0.2.66, 198.51.100.9"}, true, "198.51.100.9/32"},
		{"trusted hops are skipped", "10.0.0.1:5000", []string{"192.0.2.66, 198.51.100.9, 10.0.0.2"}, true, "198.51.100.9/32"},
		{"several headers are one list", "10.0.0.1:5000", []string{"192.0.2.66", "198.51.100.9"}, true, "198.51.100.9/32"},
		{"hop with a port", "10.0.0.1:5000", []string{"198.51.100.9:4711"}, true, "198.51.100.9/32"},
		{"ipv6 hop with a port", "10.0.0.1:5000", []string{"[2001:db8::5]:4711"}, true, "2001:db8::/64"},
		{"trusted ipv6 proxy", "[fd00::7]:5000", []string{"2001:db8::5"}, true, "2001:db8::/64"},
		{"garbage hop: the peer", "10.0.0.1:5000", []string{"198.51.100.9, not-an-ip"}, true, "10.0.0.1/32"},
		{"garbage left of the client does not matter", "10.0.0.1:5000", []string{"not-an-ip, 198.51.100.9"}, true, "198.51.100.9/32"},
		{"no header: the peer", "10.0.0.1:5000", nil, true, "10.0.0.1/32"},
		{"all hops trusted: the left-most", "10.0.0.1:5000", []string{"10.9.9.9, 10.0.0.2"}, true, "10.9.9.9/32"},
		{"untrusted peer: its header is not believed", "203.0.113.7:5000", []string{"198.51.100.9"}, true, "203.0.113.7/32"},
		{"peer without port", "10.0.0.1", nil, false, "10.0.0.1/32"},
		{"unparsable peer shares the zero key", "@", nil, false, netip.Prefix{}.String()},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
			for _, v := range c.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientKey(r, c.trustProxy, private).String(); got != c.want {
				t.Errorf("clientKey = %s, want %s", got, c.want)
			}
		})
	}
}

func TestClientLimiterBuckets(t *testing.T) {
	t.Parallel()
	lim := newClientLimiter(ClientLimit{Rate: 2, Burst: 3})
	a := netip.MustParsePrefix("192.0.2.1/32")
	b := netip.MustParsePrefix("192.0.2.2/32")
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		if _, ok := lim.allow(a, now); !ok {
			t.Fatalf("request %d within the burst refused", i+1)
		}
	}
	wait, ok := lim.allow(a, now)
	if ok || wait <= 0 || wait > 500*time.Millisecond {
		t.Fatalf("over the burst: ok=%v wait=%v, want refused with a wait of at most 1/rate", ok, wait)
	}
	// Refusals spend nothing: knocking again and again does not push
	// the client's next token further away.
	for range 100 {
		lim.allow(a, now)
	}
	if _, ok := lim.allow(a, now.Add(500*time.Millisecond)); !ok {
		t.Fatal("a token after 1/rate was refused: refusals were charged")
	}
	if _, ok := lim.allow(b, now); !ok {
		t.Fatal("another client was refused: buckets are not per client")
	}
}

func TestClientLimiterBurstDefault(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		rate float64
		want int
	}{{0.1, 1}, {1, 1}, {2.5, 3}, {50, 50}} {
		if got := newClientLimiter(ClientLimit{Rate: c.rate}).burst; got != c.want {
			t.Errorf("rate %g: burst %d, want %d", c.rate, got, c.want)
		}
	}
}

// TestClientLimiterForgetsIdleClients: memory does not keep every client
// ever seen, and forgetting never hands a client a fresh bucket early.
func TestClientLimiterForgetsIdleClients(t *testing.T) {
	t.Parallel()
	// Burst 100 at 1/s: a drained bucket takes 100s to fill.
	lim := newClientLimiter(ClientLimit{Rate: 1, Burst: 100})
	t0 := time.Unix(1_700_000_000, 0)
	drained := netip.MustParsePrefix("192.0.2.1/32")
	for range 100 {
		lim.allow(drained, t0)
	}
	for i := range 1000 {
		lim.allow(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32), t0)
	}
	if n := lim.size(); n != 1001 {
		t.Fatalf("remembers %d clients, want 1001", n)
	}
	other := netip.MustParsePrefix("192.0.2.99/32")
	lim.allow(other, t0.Add(15*time.Second))
	lim.allow(other, t0.Add(30*time.Second))
	at := t0.Add(31 * time.Second)
	got := 0
	for range 200 {
		if _, ok := lim.allow(drained, at); !ok {
			break
		}
		got++
	}
	if got > 32 {
		t.Fatalf("31s after draining, the client got %d tokens, want about 31: it was forgotten early", got)
	}
	// Past the refill time the 1000 are full again, and go as calls
	// come: 600 calls drop them all.
	for i := range 600 {
		lim.allow(other, t0.Add(101*time.Second+time.Duration(i)*time.Millisecond))
	}
	if n := lim.size(); n > 2 {
		t.Errorf("remembers %d clients after their buckets refilled, want at most 2", n)
	}
}

// TestClientLimiterBoundedUnderFlood: a flood of distinct addresses (a
// botnet, or X-Forwarded-For spoofing) cannot grow the state past
// MaxClients.
func TestClientLimiterBoundedUnderFlood(t *testing.T) {
	t.Parallel()
	lim := newClientLimiter(ClientLimit{Rate: 1, MaxClients: 100})
	now := time.Unix(1_700_000_000, 0)
	for i := range 10_000 {
		p := netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.%d/32", i>>16&0xff, i>>8&0xff, i&0xff))
		lim.allow(p, now)
		if n := lim.size(); n > 100 {
			t.Fatalf("after %d clients: remembers %d, bound is 100", i+1, n)
		}
	}
}

// TestClientLimiterEvictsLeastRecentlyUsed: at the bound, a new client
// evicts the one unseen for longest, and no other: an active client
// keeps its part-spent bucket through a flood of new addresses (a
// limiter that reset everyone at once would hand it a fresh one).
func TestClientLimiterEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	lim := newClientLimiter(ClientLimit{Rate: 0.001, Burst: 2, MaxClients: 10})
	now := time.Unix(1_700_000_000, 0)
	active := netip.MustParsePrefix("192.0.2.1/32")
	lim.allow(active, now)
	lim.allow(active, now) // drained: its next token is 1000s away
	for i := range 100 {
		lim.allow(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32), now)
		// The active client keeps knocking, so it is never the least
		// recently used.
		if _, ok := lim.allow(active, now); ok {
			t.Fatalf("after %d new clients the drained client got a token: its bucket was reset", i+1)
		}
		if n := lim.size(); n > 10 {
			t.Fatalf("remembers %d, bound is 10", n)
		}
	}
	// The oldest newcomers went, the latest nine are there.
	lim.mu.Lock()
	defer lim.mu.Unlock()
	for i := range 100 {
		_, there := lim.clients[netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 32)]
		if want := i >= 91; there != want {
			t.Errorf("client %d remembered %v, want %v", i, there, want)
		}
	}
}
