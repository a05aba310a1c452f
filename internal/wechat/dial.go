package wechat

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// MaxHTTP2Dials is how many TLS connections to WeChat are set up at once
// while WeChat speaks HTTP/2. Each such connection carries hundreds of
// calls, so a few at a time serve a burst of any size; see dialGate.
const MaxHTTP2Dials = 2

// errDialSkipped is what a call whose connection was not dialled gets
// from RoundTrip: another dial has just made a connection, which the call
// should try instead. Nothing was sent, so Code2Session tries again.
var errDialSkipped = errors.New("wechat: dial skipped: a new connection is up")

// dialGate stops a burst of calls from dialling WeChat once per call.
//
// net/http dials for every request that finds no connection free. Over
// HTTP/1.1 that is what is needed: a connection carries one request at a
// time. Over HTTP/2 it is not: when a burst of calls finds every
// connection at the server's stream limit, each call waiting starts a TLS
// handshake of its own, net/http keeps one new connection and closes the
// rest, and the runtime keeps the g of every goroutine those dials
// started for the life of the process. Transport.MaxConnsPerHost would cap
// HTTP/1.1 too, and whether WeChat speaks HTTP/2 is only known from its
// handshake.
//
// It pays on the benchmark's per-exchange memory over HTTP/2 (scenario
// 3, 1,000 exchanges held): without the gate the worker opened 145 to 537
// connections to carry them on 5, with it 6 to 8, and each exchange cost
// 14.9 KiB of Go heap and stacks without it against 13.7 with it (-8%),
// 18.7 KiB of RSS against 16.2 (-13%).
//
// So the gate learns the protocol from each handshake. While it is
// HTTP/1.1, dials pass freely. While it is HTTP/2, or unknown (the first
// dial), at most a few run at once, and the others wait for the next one
// to end, as golang.org/x/net/http2 shares one dial among its callers: a
// new HTTP/2 connection ends the wait with errDialSkipped (the call then
// tries the connections again, the new one among them), a failed dial
// with its error, which the waiting calls would most likely meet too.
type dialGate struct {
	mu       sync.Mutex
	proto    proto    // what the last handshake agreed
	dialling int      // dials under way
	next     *dialEnd // what the waiting dials wait for; nil if none wait
}

// proto is what a handshake with WeChat agreed through ALPN.
type proto uint8

const (
	protoUnknown proto = iota // no handshake yet
	protoHTTP1                // "http/1.1", or no ALPN at all
	protoHTTP2                // "h2"
)

// dialEnd is the end of a dial, as the dials that waited for it see it.
type dialEnd struct {
	done  chan struct{} // closed when the dial ends
	err   error         // the dial's error; nil if it made a connection
	proto proto         // the connection's protocol, if it made one
	retry bool          // the dial was called off: it says nothing about WeChat
}

// enter waits until a dial may start; the caller must then call leave.
// An error means: do not dial.
func (g *dialGate) enter(ctx context.Context) error {
	for {
		g.mu.Lock()
		limit := MaxHTTP2Dials
		switch g.proto {
		case protoUnknown:
			limit = 1 // the first handshake tells whether to limit at all
		case protoHTTP1:
			limit = 0 // as many as the calls need
		}
		if limit == 0 || g.dialling < limit {
			g.dialling++
			g.mu.Unlock()
			return nil
		}
		e := g.next
		if e == nil {
			e = &dialEnd{done: make(chan struct{})}
			g.next = e
		}
		g.mu.Unlock()

		select {
		case <-e.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch {
		case e.retry || (e.err == nil && e.proto != protoHTTP2):
			continue // over HTTP/1.1 every call needs a dial of its own
		case e.err != nil:
			return e.err
		}
		return errDialSkipped
	}
}

// leave ends a dial that enter let start: with the protocol its
// handshake agreed (err == nil), or its error. calledOff says the dial
// ended because its own ctx did.
func (g *dialGate) leave(p proto, err error, calledOff bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.dialling--
	if err == nil {
		g.proto = p
	}
	if e := g.next; e != nil {
		g.next = nil
		e.err, e.proto, e.retry = err, p, calledOff
		close(e.done)
	}
}

// dialTLS is the transport's DialTLSContext: what net/http does for an
// https URL without a proxy (dial, then a TLS handshake with the
// transport's TLS settings, HTTP/2 offered), through g.
func (g *dialGate) dialTLS(ctx context.Context, tr *http.Transport, dialer *net.Dialer, network, addr string) (net.Conn, error) {
	if err := g.enter(ctx); err != nil {
		return nil, err
	}
	tc, err := handshake(ctx, tr, dialer, network, addr)
	p := protoUnknown
	if err == nil {
		// net/http speaks HTTP/1.1 unless the server chose h2.
		p = protoHTTP1
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			p = protoHTTP2
		}
	}
	g.leave(p, err, err != nil && ctx.Err() != nil)
	if err != nil {
		return nil, err
	}
	return tc, nil
}

// handshake dials addr and sets up TLS on the connection, within
// TLSHandshakeTimeout, which net/http does not apply to a DialTLSContext.
func handshake(ctx context.Context, tr *http.Transport, dialer *net.Dialer, network, addr string) (*tls.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	raw, err := dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	// Read now, not in newTransport: net/http adds h2 and http/1.1 to
	// NextProtos when it first uses the transport.
	cfg := tr.TLSClientConfig.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	tc := tls.Client(raw, cfg)
	if err := raw.SetDeadline(time.Now().Add(TLSHandshakeTimeout)); err != nil {
		raw.Close()
		return nil, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		raw.Close()
		return nil, err
	}
	return tc, nil
}
