package natsconn_test

// Every way edge and worker can authenticate, tried against a real
// nats-server on 127.0.0.1 that demands it: a good credential connects
// and can exchange a message, a bad one is refused by the server.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/natsconn"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startServer runs a server with o's authentication on a random loopback
// port for the test's duration.
func startServer(t *testing.T, o *server.Options) *server.Server {
	t.Helper()
	o.Host, o.Port, o.NoSigs, o.NoLog = "127.0.0.1", -1, true, true
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// connect connects the way the binaries do and closes at the test's end.
func connect(t *testing.T, cfg config.NATS) *nats.Conn {
	t.Helper()
	if cfg.SubjectPrefix == "" {
		cfg.SubjectPrefix = "wxlogin"
	}
	nc, err := natsconn.Connect(cfg, "natsconn-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// mustWork waits for nc to be connected and sends itself a request, so
// the server has accepted the connection, not merely the socket.
func mustWork(t *testing.T, nc *nats.Conn) {
	t.Helper()
	testbed.Eventually(t, 5*time.Second, "connected", nc.IsConnected)
	sub, err := nc.Subscribe("natsconn.echo", func(m *nats.Msg) { m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	reply, err := nc.Request("natsconn.echo", []byte("ping"), 5*time.Second)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	if string(reply.Data) != "ping" {
		t.Fatalf("round trip: got %q", reply.Data)
	}
}

// mustBeRefused waits for the server to refuse nc with an authorization
// error: the connection never comes up.
func mustBeRefused(t *testing.T, nc *nats.Conn) {
	t.Helper()
	testbed.Eventually(t, 5*time.Second, "an authorization error", func() bool {
		err := nc.LastError()
		return err != nil && strings.Contains(strings.ToLower(err.Error()), "authorization")
	})
	if nc.IsConnected() {
		t.Fatal("connected with a bad credential")
	}
}

// writeFile writes content to a new file in a temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUserPassword(t *testing.T) {
	t.Parallel()
	s := startServer(t, &server.Options{Username: "edge", Password: "s3cret-pw"})
	mustWork(t, connect(t, config.NATS{URL: s.ClientURL(), User: "edge", Password: "s3cret-pw"}))
	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), User: "edge", Password: "wrong"}))
}

// TestPasswordFile: the password comes from a file (a mounted secret),
// trailing newline ignored, and is read again at reconnect, so a rotated
// secret works without a restart.
func TestPasswordFile(t *testing.T) {
	t.Parallel()
	opts := &server.Options{Username: "edge", Password: "first-pw"}
	s := startServer(t, opts)
	path := writeFile(t, "password", "first-pw\n")
	nc := connect(t, config.NATS{URL: s.ClientURL(), User: "edge", PasswordFile: path})
	mustWork(t, nc)

	// Rotate: the secret file changes, then the server's password does.
	// The server drops the connection, and the reconnect uses the new file.
	if err := os.WriteFile(path, []byte("second-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := opts.Clone()
	next.Password = "second-pw"
	if err := s.ReloadOptions(next); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "reconnected with the rotated password", func() bool {
		return nc.Stats().Reconnects > 0 && nc.IsConnected()
	})
	mustWork(t, nc)

	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), User: "edge", PasswordFile: writeFile(t, "old", "first-pw")}))
	if _, err := natsconn.Connect(config.NATS{URL: s.ClientURL(), User: "edge", PasswordFile: filepath.Join(t.TempDir(), "absent")}, "x", quiet); err == nil || !strings.Contains(err.Error(), "NATS_PASSWORD_FILE") {
		t.Errorf("a missing password file: got %v, want an error naming NATS_PASSWORD_FILE", err)
	}
}

func TestToken(t *testing.T) {
	t.Parallel()
	s := startServer(t, &server.Options{Authorization: "t0ken-value"})
	mustWork(t, connect(t, config.NATS{URL: s.ClientURL(), Token: "t0ken-value"}))
	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), Token: "other"}))
}

func TestTokenFile(t *testing.T) {
	t.Parallel()
	s := startServer(t, &server.Options{Authorization: "t0ken-value"})
	mustWork(t, connect(t, config.NATS{URL: s.ClientURL(), TokenFile: writeFile(t, "token", "t0ken-value\n")}))
	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), TokenFile: writeFile(t, "token", "other")}))
	if _, err := natsconn.Connect(config.NATS{URL: s.ClientURL(), TokenFile: writeFile(t, "empty", "\n")}, "x", quiet); err == nil || !strings.Contains(err.Error(), "NATS_TOKEN_FILE") {
		t.Errorf("an empty token file: got %v, want an error naming NATS_TOKEN_FILE", err)
	}
}

func TestNKeySeedFile(t *testing.T) {
	t.Parallel()
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	s := startServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	mustWork(t, connect(t, config.NATS{URL: s.ClientURL(), NKey: writeFile(t, "user.nk", string(seed))}))

	stranger, _ := nkeys.CreateUser()
	strangerSeed, _ := stranger.Seed()
	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), NKey: writeFile(t, "other.nk", string(strangerSeed))}))
}

// TestCredsFile runs the server in operator (decentralised JWT) mode, the
// way NGS or an nsc-managed deployment does, and connects with a .creds
// file that holds a user JWT signed by the account and the user's seed.
func TestCredsFile(t *testing.T) {
	t.Parallel()
	operator, _ := nkeys.CreateOperator()
	operatorPub, _ := operator.PublicKey()
	operatorJWT, err := jwt.NewOperatorClaims(operatorPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	operatorClaims, err := jwt.DecodeOperatorClaims(operatorJWT)
	if err != nil {
		t.Fatal(err)
	}
	account, _ := nkeys.CreateAccount()
	accountPub, _ := account.PublicKey()
	accountJWT, err := jwt.NewAccountClaims(accountPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(accountPub, accountJWT); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, &server.Options{TrustedOperators: []*jwt.OperatorClaims{operatorClaims}, AccountResolver: resolver})

	creds := func(signer nkeys.KeyPair) string {
		user, _ := nkeys.CreateUser()
		userPub, _ := user.PublicKey()
		seed, _ := user.Seed()
		userJWT, err := jwt.NewUserClaims(userPub).Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		b, err := jwt.FormatUserConfig(userJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(t, "user.creds", string(b))
	}
	mustWork(t, connect(t, config.NATS{URL: s.ClientURL(), Creds: creds(account)}))

	// A user signed by an account the operator never issued.
	rogue, _ := nkeys.CreateAccount()
	mustBeRefused(t, connect(t, config.NATS{URL: s.ClientURL(), Creds: creds(rogue)}))
}

// TestTLS: the server requires TLS and a client certificate, both from a
// CA made here; the client verifies the server against that CA.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newCA(t)
	ca.write(t, dir, "ca.pem", ca.cert, nil)
	srvCert, srvKey := ca.issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	ca.write(t, dir, "server.pem", srvCert, srvKey)
	cliCert, cliKey := ca.issue(t, "wxlogin-edge", x509.ExtKeyUsageClientAuth)
	ca.write(t, dir, "client.pem", cliCert, cliKey)

	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server.pem.key"),
		CaFile: filepath.Join(dir, "ca.pem"), Verify: true, Timeout: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2})
	url := "tls://" + s.Addr().String()

	mustWork(t, connect(t, config.NATS{URL: url, TLSCA: filepath.Join(dir, "ca.pem"),
		TLSCert: filepath.Join(dir, "client.pem"), TLSKey: filepath.Join(dir, "client.pem.key")}))

	// Without a client certificate the server refuses the handshake.
	nc := connect(t, config.NATS{URL: url, TLSCA: filepath.Join(dir, "ca.pem")})
	testbed.Eventually(t, 5*time.Second, "a TLS error", func() bool { return nc.LastError() != nil })
	if nc.IsConnected() {
		t.Fatal("connected without a client certificate")
	}
	// A server certificate from another CA is not trusted.
	other := newCA(t)
	other.write(t, dir, "other-ca.pem", other.cert, nil)
	nc = connect(t, config.NATS{URL: url, TLSCA: filepath.Join(dir, "other-ca.pem"),
		TLSCert: filepath.Join(dir, "client.pem"), TLSKey: filepath.Join(dir, "client.pem.key")})
	testbed.Eventually(t, 5*time.Second, "a certificate error", func() bool {
		err := nc.LastError()
		return err != nil && strings.Contains(err.Error(), "certificate")
	})
	if nc.IsConnected() {
		t.Fatal("trusted a server certificate from an unknown CA")
	}
}

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wxlogin test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

// issue makes a leaf certificate: for an IP address name, the server's;
// otherwise a client's with that common name.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// write stores cert as name and, when key is given, the key as name.key.
func (ca *testCA) write(t *testing.T, dir, name string, cert *x509.Certificate, key *ecdsa.PrivateKey) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if key == nil {
		return
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
