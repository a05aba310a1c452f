package deploy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
)

// shippedTLSDir is where nats/nats.conf finds its certificates (the
// Compose mount of deploy/nats/tls).
const shippedTLSDir = "/etc/nats/tls/"

// caFile is the CA of the running test server's certificate, set by
// startDeployNATS.
var caFile string

// writeTestCerts makes what deploy/README.md tells the operator to make:
// a CA, and a server certificate it signs for the server's names (here
// 127.0.0.1 and localhost), usable for server and client auth as the
// cluster routes need. It returns the CA's path.
func writeTestCerts(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wxlogin test NATS CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ca.crt", "CERTIFICATE", caDER)
	write("server.crt", "CERTIFICATE", der)
	write("server.key", "PRIVATE KEY", keyDER)
	return filepath.Join(dir, "ca.crt")
}

// TestTLSRequired: the shipped server refuses a client that does not
// speak TLS, and the edge and a worker, connected with NATS_TLS_CA
// through natsconn, serve a login over HTTP end to end.
func TestTLSRequired(t *testing.T) {
	s := startDeployNATS(t)

	// Plain TCP: the server insists on TLS.
	if nc, err := nats.Connect(strings.Replace(s.ClientURL(), "tls://", "nats://", 1),
		nats.UserInfo("edge", passwords["edge"]), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client without TLS connected")
	} else if !strings.Contains(strings.ToLower(err.Error()), "tls") {
		t.Errorf("plain client: %v, want a TLS error", err)
	}
	// TLS without trusting the CA: the server's certificate is refused.
	if nc, err := nats.Connect(s.ClientURL(), nats.UserInfo("edge", passwords["edge"]), nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a client that does not trust the CA connected")
	} else {
		var uae x509.UnknownAuthorityError
		if !errors.As(err, &uae) && !strings.Contains(err.Error(), "certificate") {
			t.Errorf("untrusting client: %v, want a certificate error", err)
		}
	}

	startWorker(t, s)
	ec := login(t, s, "edge")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- edge.ServeListener(ctx, edge.Config{Timeout: 3 * time.Second, MaxBody: 4096}, ln, ec.Conn, quiet, edge.ProbeOptions{})
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("edge: %v", err)
		}
	}()
	resp, err := http.Get("http://" + ln.Addr().String() + "/v1/openid?code=deploy-tls-1&appid=" + testbed.App.AppID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("login through the edge over TLS NATS: %d", resp.StatusCode)
	}
	if !ec.Conn.TLSRequired() {
		t.Error("the edge's connection is not over TLS")
	}
}
