package fakewx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// TLSCert is a self-signed certificate for serving the fake over HTTPS on
// the loopback interface, as real WeChat is served: with TLS, HTTP/2 is
// offered through ALPN, so a client that speaks it multiplexes its calls
// over a few connections instead of holding one per call in flight.
//
// The certificate is its own root. Clients trust it through CertPool (Go)
// or PEM (a file for a worker's WX_CA_FILE); nothing else trusts it.
type TLSCert struct {
	cert tls.Certificate
	pem  []byte
	pool *x509.CertPool
}

// tlsValidity is how long a generated certificate is valid: long enough
// for a soak, short enough that a leaked one is soon worthless.
const tlsValidity = 30 * 24 * time.Hour

// NewTLSCert generates a fresh ECDSA P-256 key and a self-signed
// certificate for 127.0.0.1, ::1, localhost and the extra host names
// given (a Compose service name, say). The key never leaves the process.
func NewTLSCert(hosts ...string) (*TLSCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("fakewx: generating a TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("fakewx: generating a serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"wxlogin fakewx"}, CommonName: "fakewx (self-signed, loopback only)"},
		// An hour of slack for clocks that disagree a little.
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(tlsValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // its own root, so a client can put it in a CA bundle
		DNSNames:              append([]string{"localhost"}, hosts...),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("fakewx: signing the TLS certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("fakewx: parsing the TLS certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &TLSCert{
		cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf},
		pem:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pool: pool,
	}, nil
}

// PEM returns the certificate (not the key) PEM-encoded, for a client's CA
// bundle such as WX_CA_FILE.
func (c *TLSCert) PEM() []byte { return append([]byte(nil), c.pem...) }

// CertPool returns a pool holding only this certificate, for a client's
// tls.Config.RootCAs (or wechat.RootCAs).
func (c *TLSCert) CertPool() *x509.CertPool { return c.pool.Clone() }

// ServerConfig returns a server configuration that presents the
// certificate and offers HTTP/2 and HTTP/1.1 through ALPN, in that order,
// as WeChat's servers would if they speak HTTP/2.
func (c *TLSCert) ServerConfig() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{c.cert},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
}

// Listener wraps ln so that it accepts TLS connections with this
// certificate. An http.Server whose TLSConfig is nil, serving it with
// Serve, then speaks HTTP/2 to clients that ask for it and HTTP/1.1 to the
// others.
func (c *TLSCert) Listener(ln net.Listener) net.Listener {
	return tls.NewListener(ln, c.ServerConfig())
}
