package fakewx_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
)

func TestTLSCert(t *testing.T) {
	t.Parallel()
	c, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(c.PEM())
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("PEM is not exactly one certificate: %q", c.PEM())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("key is %T, want ECDSA P-256", cert.PublicKey)
	}
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: c.CertPool()}); err != nil {
			t.Errorf("not valid for %s: %v", name, err)
		}
	}
	for _, name := range []string{"api.weixin.qq.com", "10.0.0.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: c.CertPool()}); err == nil {
			t.Errorf("valid for %s, want loopback only", name)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "localhost"}); err == nil {
		t.Error("trusted without its pool")
	}
	// A second certificate is another root: trusting one is not trusting all.
	other, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: other.CertPool()}); err == nil {
		t.Error("trusted through another fake's pool")
	}
}

// serveTLS serves fake over TLS with cert the way cmd/fakewx does (an
// http.Server on cert.Listener) and returns its https URL.
func serveTLS(t *testing.T, fake *fakewx.Server, cert *fakewx.TLSCert) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fake, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(cert.Listener(ln)) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return "https://" + ln.Addr().String()
}

// clientFor returns a client trusting pool and speaking only protos.
func clientFor(t *testing.T, pool *x509.CertPool, protos func(*http.Protocols)) *http.Client {
	t.Helper()
	var p http.Protocols
	protos(&p)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// tlsFixture is a fake serving over HTTPS with a certificate of its own.
func tlsFixture(t *testing.T) (*fixture, *fakewx.TLSCert) {
	t.Helper()
	cert, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{bound}})
	// fixture.try uses only the server's URL.
	return &fixture{t: t, fake: fake, srv: &httptest.Server{URL: serveTLS(t, fake, cert)}}, cert
}

func TestCallsByProtocol(t *testing.T) {
	t.Parallel()
	f, cert := tlsFixture(t)
	fake := f.fake
	h1 := clientFor(t, cert.CertPool(), func(p *http.Protocols) { p.SetHTTP1(true) })
	h2 := clientFor(t, cert.CertPool(), func(p *http.Protocols) { p.SetHTTP2(true) })
	both := clientFor(t, cert.CertPool(), func(p *http.Protocols) { p.SetHTTP1(true); p.SetHTTP2(true) })

	q := func(code string) map[string][]string {
		return query(bound.AppID, bound.Secret, code, "authorization_code")
	}
	for i, c := range []*http.Client{h1, h2, both, h2} {
		code := "tls" + strconv.Itoa(i)
		r, err := f.try(context.Background(), c, q(code))
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		wantSuccess(t, r, bound, code)
	}
	// A client offering both gets HTTP/2: the server prefers it.
	if n1, n2 := fake.CallsByProtocol(); n1 != 1 || n2 != 3 {
		t.Errorf("CallsByProtocol = %d, %d; want 1 over HTTP/1.1, 3 over HTTP/2", n1, n2)
	}
	if got := fake.TotalCalls(); got != 4 {
		t.Errorf("TotalCalls = %d, want 4", got)
	}

	// Plain HTTP is HTTP/1.1.
	plain := newFixture(t, fakewx.Config{})
	plain.exchange(bound, "plain")
	if n1, n2 := plain.fake.CallsByProtocol(); n1 != 1 || n2 != 0 {
		t.Errorf("plain HTTP: CallsByProtocol = %d, %d; want 1, 0", n1, n2)
	}
}

func TestTLSUntrusted(t *testing.T) {
	t.Parallel()
	f, _ := tlsFixture(t)
	// The system's roots do not hold the fake's certificate.
	c := clientFor(t, nil, func(p *http.Protocols) { p.SetHTTP1(true); p.SetHTTP2(true) })
	_, err := f.try(context.Background(), c, query(bound.AppID, bound.Secret, "untrusted", "authorization_code"))
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Fatalf("err = %v, want x509.UnknownAuthorityError", err)
	}
	if f.fake.TotalCalls() != 0 {
		t.Error("a request went through an untrusted connection")
	}
}
