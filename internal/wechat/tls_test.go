package wechat

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// tlsFake is the fake WeChat served over TLS with its own certificate, as
// cmd/fakewx serves it with FAKEWX_TLS, counting the connections it
// accepts and those that carried calls.
type tlsFake struct {
	URL      string
	cert     *fakewx.TLSCert
	fake     *fakewx.Server
	newConns atomic.Int64
	used     sync.Map // client address → struct{}, for each connection that carried a call
}

// usedConns is how many connections carried calls. A client that finds
// every connection at its stream limit dials anew for each call that
// arrives meanwhile, then keeps one of the connections and closes the
// others unused: those count in newConns, not here.
func (f *tlsFake) usedConns() int {
	n := 0
	f.used.Range(func(any, any) bool { n++; return true })
	return n
}

// newTLSFake serves the fake, behind h if not nil (h gets the fake to call
// on), over TLS. maxStreams, if not zero, is the server's limit of
// concurrent HTTP/2 streams per connection (Go's default is 250).
func newTLSFake(t *testing.T, maxStreams int, h func(fake http.Handler) http.Handler) *tlsFake {
	t.Helper()
	return newTLSFakeOffering(t, []string{"h2", "http/1.1"}, maxStreams, h, nil)
}

// newTLSFakeOffering is newTLSFake offering only the protocols in alpn,
// accepting connections through wrap(listener) if wrap is not nil.
func newTLSFakeOffering(t *testing.T, alpn []string, maxStreams int, h func(fake http.Handler) http.Handler,
	wrap func(net.Listener) net.Listener) *tlsFake {
	t.Helper()
	cert, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsFake{cert: cert, fake: fakewx.New(fakewx.Config{Apps: []fakewx.App{{AppID: testAppID, Secret: testSecret}}})}
	var handler http.Handler = f.fake
	if h != nil {
		handler = h(f.fake)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.used.Store(r.RemoteAddr, struct{}{})
			handler.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		// Handshakes the client abandons (see usedConns) and refuses (an
		// untrusted certificate) are logged; they are expected here.
		ErrorLog: log.New(io.Discard, "", 0),
		HTTP2:    &http.HTTP2Config{MaxConcurrentStreams: maxStreams},
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				f.newConns.Add(1)
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	cfg := cert.ServerConfig()
	cfg.NextProtos = alpn
	if wrap != nil {
		ln = wrap(ln)
	}
	go func() { done <- srv.Serve(tls.NewListener(ln, cfg)) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	f.URL = "https://" + ln.Addr().String()
	return f
}

// newTLSClient is a client trusting f's certificate.
func newTLSClient(t *testing.T, f *tlsFake, opts ...Option) *Client {
	t.Helper()
	c, err := New(f.URL, append([]Option{RootCAs(f.cert.CertPool())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.tr.CloseIdleConnections)
	return c
}

// holdUntil makes the fake hold every request whose code starts with
// "held-" until n of them have arrived, so that n calls are in flight
// together whatever the scheduler does.
func holdUntil(n int64) func(http.Handler) http.Handler {
	var arrived atomic.Int64
	all := make(chan struct{})
	return func(fake http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasPrefix(r.URL.Query().Get("js_code"), "held-") {
				if arrived.Add(1) == n {
					close(all)
				}
				select {
				case <-all:
				case <-r.Context().Done():
					return
				}
			}
			fake.ServeHTTP(w, r)
		})
	}
}

// callsInFlight makes n calls at once, codes held-0 … held-(n-1), and
// fails the test on any error.
func callsInFlight(t *testing.T, c *Client, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			code := "held-" + strconv.Itoa(i)
			s, err := c.Code2Session(ctx, testAppID, testSecret, code)
			if err != nil {
				t.Errorf("call %d: %v", i, err)
			} else if s.OpenID != fakewx.OpenID(testAppID, code) {
				t.Errorf("call %d: openid %q", i, s.OpenID)
			}
		})
	}
	wg.Wait()
}

// firstCall makes one call, which sets up a connection and lets the
// client learn what the server speaks.
func firstCall(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Code2Session(ctx, testAppID, testSecret, testCode); err != nil {
		t.Fatal(err)
	}
}

// wantProtocols checks how many calls the fake got over HTTP/1.x and
// over HTTP/2.
func wantProtocols(t *testing.T, f *tlsFake, h1, h2 int64) {
	t.Helper()
	if got1, got2 := f.fake.CallsByProtocol(); got1 != h1 || got2 != h2 {
		t.Errorf("calls by protocol: HTTP/1.x %d, HTTP/2 %d; want %d, %d", got1, got2, h1, h2)
	}
}

func TestHTTP2OverTLS(t *testing.T) {
	t.Parallel()
	const n = 200 // below the server's 250 streams per connection
	f := newTLSFake(t, 0, holdUntil(n))
	c := newTLSClient(t, f)

	// The first call sets up the connection and learns the server's
	// stream limit; the next n all ride on it.
	firstCall(t, c)
	callsInFlight(t, c, n)

	wantProtocols(t, f, 0, n+1)
	if used, dialled := f.usedConns(), f.newConns.Load(); used != 1 || dialled != 1 {
		t.Errorf("%d calls in flight at once used %d connections (%d opened), want 1", n, used, dialled)
	}
}

func TestHTTP2OpensConnectionsAsNeeded(t *testing.T) {
	t.Parallel()
	// With 50 streams per connection, 200 calls in flight need at least
	// 4 connections; the client opens them rather than queueing calls
	// behind the limit (which would never end here: the fake holds every
	// call until all 200 have arrived).
	const n, streams = 200, 50
	f := newTLSFake(t, streams, holdUntil(n))
	c := newTLSClient(t, f)
	firstCall(t, c)
	callsInFlight(t, c, n)

	wantProtocols(t, f, 0, n+1)
	used := f.usedConns()
	t.Logf("%d calls in flight, %d streams per connection: %d connections used, %d opened", n, streams, used, f.newConns.Load())
	if used < n/streams || used > n/10 {
		t.Errorf("%d calls in flight at %d streams per connection used %d connections, want %d to %d",
			n, streams, used, n/streams, n/10)
	}
}

func TestUntrustedCertificate(t *testing.T) {
	t.Parallel()
	f := newTLSFake(t, 0, nil)
	other, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	system, err := New(f.URL) // the system's roots
	if err != nil {
		t.Fatal(err)
	}
	wrong, err := New(f.URL, RootCAs(other.CertPool()))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*Client{"system roots": system, "another certificate": wrong} {
		t.Run(name, func(t *testing.T) {
			t.Cleanup(c.tr.CloseIdleConnections)
			_, err := call(c, 5*time.Second)
			e := assertClean(t, err)
			if e.Kind != protocol.KindUpstream || e.Retry != protocol.RetrySameCode || e.Temporary ||
				e.Message != "could not verify WeChat's TLS certificate" {
				t.Errorf("got %v (retry %s, temporary %v)", e, e.Retry, e.Temporary)
			}
			if cause := errors.Unwrap(err); cause == nil || !strings.Contains(cause.Error(), "certificate") {
				t.Errorf("cause %v does not say what failed", cause)
			}
		})
	}
	if n := f.fake.TotalCalls(); n != 0 {
		t.Errorf("%d requests reached the fake over an untrusted connection", n)
	}
}

func TestHTTP2BurstDialsFewConnections(t *testing.T) {
	t.Parallel()
	// A burst on a client with no connection yet: every call finds no
	// stream free until connections come up, and without the dial gate
	// each would start a handshake of its own (some n of them).
	const n, streams = 400, 20
	f := newTLSFake(t, streams, holdUntil(n))
	c := newTLSClient(t, f)
	callsInFlight(t, c, n)

	wantProtocols(t, f, 0, n)
	used, dialled := f.usedConns(), f.newConns.Load()
	t.Logf("%d calls in flight, %d streams per connection: %d connections used, %d opened", n, streams, used, dialled)
	// A connection that comes up while another still has streams free is
	// closed unused: with MaxHTTP2Dials under way, up to that many per
	// connection used (about 2 in practice).
	if limit := int64(2 * MaxHTTP2Dials * used); dialled > limit {
		t.Errorf("%d calls opened %d connections to use %d, want at most %d", n, dialled, used, limit)
	}
}

func TestHTTP1OverTLSDialsPerCall(t *testing.T) {
	t.Parallel()
	// Over HTTP/1.1 each call in flight needs a connection of its own,
	// and a burst must not wait for them to be set up a few at a time:
	// the fake holds every handshake after the first connection's until
	// all the connections the calls need have been accepted, and every
	// call until all n have arrived.
	const n = 100
	for name, alpn := range map[string][]string{"ALPN http/1.1": {"http/1.1"}, "no ALPN": nil} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newTLSFakeOffering(t, alpn, 0, holdUntil(n), func(ln net.Listener) net.Listener {
				return &handshakesTogether{Listener: ln, n: n, all: make(chan struct{})}
			})
			c := newTLSClient(t, f)
			// The first call tells the client that the server speaks
			// HTTP/1.1; its connection, idle again, carries one of the n.
			firstCall(t, c)
			callsInFlight(t, c, n)

			wantProtocols(t, f, n+1, 0)
			if used := f.usedConns(); used != n {
				t.Errorf("%d calls in flight over HTTP/1.1 used %d connections, want %d", n, used, n)
			}
		})
	}
}

// handshakesTogether accepts connections whose first read (the TLS
// handshake's) waits, from the second connection on, until n connections
// have been accepted.
type handshakesTogether struct {
	net.Listener
	n        int64
	accepted atomic.Int64
	all      chan struct{}
}

func (l *handshakesTogether) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	switch k := l.accepted.Add(1); {
	case k == 1:
		return c, nil
	case k == l.n:
		close(l.all)
	}
	return &heldConn{Conn: c, all: l.all}, nil
}

type heldConn struct {
	net.Conn
	all  chan struct{}
	once sync.Once
}

func (c *heldConn) Read(p []byte) (int, error) {
	c.once.Do(func() {
		select {
		case <-c.all:
		case <-time.After(20 * time.Second): // the test fails on its own
		}
	})
	return c.Conn.Read(p)
}

func TestBurstSharesDialError(t *testing.T) {
	t.Parallel()
	// Calls that wait while a dial fails get its error rather than
	// waiting on, and it is classified as the dial's own would be.
	f := newTLSFake(t, 0, nil)
	other, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	c := newTLSClient(t, f, RootCAs(other.CertPool()))
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, err := call(c, 10*time.Second)
			e := assertClean(t, err)
			if e.Message != "could not verify WeChat's TLS certificate" || e.Temporary {
				t.Errorf("got %v (temporary %v)", e, e.Temporary)
			}
		})
	}
	wg.Wait()
	if n := f.fake.TotalCalls(); n != 0 {
		t.Errorf("%d requests reached the fake over an untrusted connection", n)
	}
	// Without the dial gate, each call makes a handshake of its own.
	if hs := f.newConns.Load(); hs > n/2 {
		t.Errorf("%d calls made %d handshakes, want the waiting calls to share one's outcome", n, hs)
	}
}
