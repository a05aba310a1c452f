package wechat

import (
	"context"
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
	go func() { done <- srv.Serve(cert.Listener(ln)) }()
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

func TestHTTP2OverTLS(t *testing.T) {
	t.Parallel()
	const n = 200 // below the server's 250 streams per connection
	f := newTLSFake(t, 0, holdUntil(n))
	c := newTLSClient(t, f)

	// The first call sets up the connection and learns the server's
	// stream limit; the next n all ride on it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Code2Session(ctx, testAppID, testSecret, testCode); err != nil {
		t.Fatal(err)
	}
	callsInFlight(t, c, n)

	if h1, h2 := f.fake.CallsByProtocol(); h1 != 0 || h2 != n+1 {
		t.Errorf("calls by protocol: HTTP/1.x %d, HTTP/2 %d; want 0, %d", h1, h2, n+1)
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Code2Session(ctx, testAppID, testSecret, testCode); err != nil {
		t.Fatal(err)
	}
	callsInFlight(t, c, n)

	if h1, h2 := f.fake.CallsByProtocol(); h1 != 0 || h2 != n+1 {
		t.Errorf("calls by protocol: HTTP/1.x %d, HTTP/2 %d; want 0, %d", h1, h2, n+1)
	}
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
