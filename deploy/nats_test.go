package deploy

// A real nats-server runs deploy/nats/nats.conf (cluster settings aside, on
// a random loopback port) and each user of deploy/nats/accounts.conf
// connects the way the binaries do: each can do its job, and the server
// refuses what the user has no business doing.
//
// These tests set the environment (the passwords the config refers to),
// so none is parallel.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wxlogin/wxlogin/internal/bucket"
	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/natsconn"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// passwords are what the test puts in nats-server's environment for the
// $VARIABLES of accounts.conf.
var passwords = map[string]string{
	"edge":    "edge-pw-for-tests",
	"worker":  "worker-pw-for-tests",
	"service": "service-pw-for-tests",
}

// startDeployNATS runs the shipped configuration, TLS included. Only
// what cannot work on a test machine changes: the certificates' directory
// (made by the test for 127.0.0.1), the listen address, the monitoring
// port, the cluster routes (hostnames of the Compose network) and the
// store. The CA's path is in caFile afterwards, for login.
func startDeployNATS(t *testing.T) *server.Server {
	t.Helper()
	t.Setenv("NATS_SERVER_NAME", "deploy-test")
	for user, pw := range passwords {
		t.Setenv(strings.ToUpper(user)+"_PASSWORD", pw)
	}
	dir := t.TempDir()
	tlsDir := filepath.Join(dir, "tls")
	caFile = writeTestCerts(t, tlsDir)
	for _, f := range []string{"nats.conf", "accounts.conf"} {
		b, err := os.ReadFile(filepath.Join("nats", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "nats.conf" && !strings.Contains(string(b), shippedTLSDir) {
			t.Fatalf("nats/nats.conf does not use the certificates in %s", shippedTLSDir)
		}
		b = []byte(strings.ReplaceAll(string(b), shippedTLSDir, tlsDir+"/"))
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if opts.TLSConfig == nil {
		t.Fatal("nats/nats.conf does not require TLS of its clients")
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes, opts.RoutesStr = server.ClusterOpts{}, nil, ""
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server with deploy/nats/nats.conf is not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// conn is a connection as one of the accounts' users, with the server's
// permission errors collected.
type conn struct {
	*nats.Conn
	mu     sync.Mutex
	denied []string
}

// login connects as user with its password read from a file, as the
// Kubernetes manifests do (NATS_PASSWORD_FILE).
func login(t *testing.T, s *server.Server, user string) *conn {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(passwords[user]+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := &conn{}
	cfg := config.NATS{URL: s.ClientURL(), User: user, PasswordFile: pwFile, TLSCA: caFile, SubjectPrefix: protocol.DefaultSubjectPrefix}
	nc, err := natsconn.Connect(cfg, "deploy-test-"+user, quiet, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			c.mu.Lock()
			c.denied = append(c.denied, err.Error())
			c.mu.Unlock()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	testbed.Eventually(t, 5*time.Second, user+" connected", nc.IsConnected)
	c.Conn = nc
	return c
}

// violations returns the permission errors so far.
func (c *conn) violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.denied...)
}

// mustBeDenied runs do and waits for the server to report a permission
// violation that names subject.
func (c *conn) mustBeDenied(t *testing.T, what, subject string, do func() error) {
	t.Helper()
	n := len(c.violations())
	if err := do(); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("%s: %v", what, err)
	}
	c.Flush()
	testbed.Eventually(t, 5*time.Second, what+" refused", func() bool {
		for _, v := range c.violations()[n:] {
			if strings.Contains(v, `"`+subject+`"`) {
				return true
			}
		}
		return false
	})
}

// startWorker runs a real exchange worker as the worker user against a
// fake WeChat, with the pool-wide rate limit on so that its bucket and
// its discovery pings are exercised too.
func startWorker(t *testing.T, s *server.Server) (*exchange.Worker, *conn) {
	t.Helper()
	fake := fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}})
	upstream := httptest.NewServer(fake)
	t.Cleanup(upstream.Close)
	client, err := wechat.New(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	key, err := token.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := token.NewIssuer([]token.Key{key}, token.Options{Issuer: "wxlogin", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	w, err := exchange.New(exchange.Config{
		Apps: map[string]string{testbed.App.AppID: testbed.App.Secret}, HTTPTimeout: 2 * time.Second,
		MaxAttempts: 1, Concurrency: 16, RequestTimeout: 5 * time.Second, Rate: 1000,
		Tokens: tokens,
	}, client, quiet)
	if err != nil {
		t.Fatal(err)
	}
	c := login(t, s, "worker")
	if err := w.Start(c.Conn, "0.0.0-test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Shutdown() })
	return w, c
}

// newEndpoints are requester subjects the workers do not serve yet, so a
// stand-in does. (jwks and session are served by the real worker.)
var newEndpoints = []string{"decrypt", "phone"}

// startStandIn answers the new endpoints as the worker user, in the
// workers' queue group.
func startStandIn(t *testing.T, s *server.Server) *conn {
	t.Helper()
	c := login(t, s, "worker")
	for _, ep := range newEndpoints {
		if _, err := c.QueueSubscribe("wxlogin."+ep, protocol.QueueGroup, func(m *nats.Msg) { m.Respond([]byte(ep + " ok")) }); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	return c
}

// askAll requests each new endpoint and checks the stand-in's answer.
func askAll(t *testing.T, who string, nc *nats.Conn) {
	t.Helper()
	for _, ep := range newEndpoints {
		reply, err := nc.Request("wxlogin."+ep, nil, 5*time.Second)
		if err != nil || string(reply.Data) != ep+" ok" {
			t.Errorf("%s requesting wxlogin.%s: %v", who, ep, err)
		}
	}
}

// ask requests an openid as a requester would, and returns the error the
// reply carries, if any.
func ask(t *testing.T, nc *nats.Conn, code string) (protocol.Result, error) {
	t.Helper()
	data, _ := json.Marshal(protocol.Request{AppID: testbed.App.AppID, Code: code})
	msg := nats.NewMsg(protocol.Subject(protocol.DefaultSubjectPrefix))
	msg.Data = data
	msg.Header.Set(protocol.HeaderTimeout, "3000")
	reply, err := nc.RequestMsg(msg, 5*time.Second)
	if err != nil {
		return protocol.Result{}, err
	}
	res, e := protocol.DecodeReply(reply)
	if e != nil {
		return res, e
	}
	return res, nil
}

// TestEdgeUser: the edge asks for openids and probes discovery, and may
// do nothing else: not subscribe to the workers' subject (it would see
// every login code), not publish anywhere else.
func TestEdgeUser(t *testing.T) {
	s := startDeployNATS(t)
	ec := login(t, s, "edge")

	// Without a worker, a request fails at once: the import keeps the
	// contract's fast "no responders".
	start := time.Now()
	if _, err := ask(t, ec.Conn, "deploy-before"); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("no worker: got %v, want no responders", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("no responders took %v", took)
	}

	_, wc := startWorker(t, s)
	res, err := ask(t, ec.Conn, "deploy-edge-1")
	if err != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, "deploy-edge-1") {
		t.Fatalf("edge request: %v %+v", err, res)
	}
	// The login tokens' public keys, which the edge verifies with.
	if reply, err := ec.Request(protocol.JWKSSubject("wxlogin"), nil, 3*time.Second); err != nil {
		t.Errorf("edge asking for the JWKS: %v", err)
	} else if v, err := token.ParseJWKS(reply.Data, "wxlogin"); err != nil {
		t.Errorf("the JWKS the edge gets: %v", err)
	} else if _, err := v.Verify(res.Token); err != nil {
		t.Errorf("the JWKS the edge gets does not verify the token: %v", err)
	}
	// The contract's error replies, headers and all, cross the account
	// boundary too.
	if _, err := ask(t, ec.Conn, "fx-invalid-deploy"); !strings.Contains(errString(err), string(protocol.KindInvalidCode)) {
		t.Errorf("an invalid code: got %v, want %s", err, protocol.KindInvalidCode)
	}

	// Readiness: the edge's discovery probe sees the worker through the
	// import, with the edge's own permissions.
	workers := edge.NewWorkers(ec.Conn, "", edge.ProbeOptions{Interval: 50 * time.Millisecond, Window: 100 * time.Millisecond}, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	probing := make(chan struct{})
	go func() { defer close(probing); workers.Run(ctx) }()
	defer func() { cancel(); <-probing }()
	testbed.Eventually(t, 5*time.Second, "edge sees the worker", func() bool { ok, _ := workers.Ready(); return ok })

	// The public keys of login tokens, from the real worker.
	if _, err := ec.Request(protocol.JWKSSubject("wxlogin"), nil, 3*time.Second); err != nil {
		t.Errorf("edge asking wxlogin.jwks: %v", err)
	}
	// The decrypt and phone subjects cross the boundary too.
	standIn := startStandIn(t, s)
	askAll(t, "edge", ec.Conn)
	if v := standIn.violations(); len(v) > 0 {
		t.Errorf("the worker was refused serving the new endpoints: %v", v)
	}

	ec.mustBeDenied(t, "edge subscribing to the exchange", "wxlogin.code2session", func() error {
		_, err := ec.Subscribe("wxlogin.code2session", func(*nats.Msg) {})
		return err
	})
	ec.mustBeDenied(t, "edge joining the workers' queue", "wxlogin.code2session", func() error {
		_, err := ec.QueueSubscribe("wxlogin.code2session", protocol.QueueGroup, func(*nats.Msg) {})
		return err
	})
	for _, subject := range []string{"wxlogin.other", "wxlogin.session", "$KV.wxlogin_results.x", "$JS.API.INFO", "$SRV.PING.wxlogin"} {
		ec.mustBeDenied(t, "edge publishing to "+subject, subject, func() error { return ec.Publish(subject, nil) })
	}
	if v := wc.violations(); len(v) > 0 {
		t.Errorf("the worker was refused something it needs: %v", v)
	}
}

// TestWorkerUser: the worker serves in the queue group, replies, answers
// discovery and uses its key-value buckets, with no permission error;
// it cannot listen outside the queue group, ask for openids itself, or
// touch other streams.
func TestWorkerUser(t *testing.T) {
	s := startDeployNATS(t)
	w, wc := startWorker(t, s)
	sc := login(t, s, "service")
	if _, err := ask(t, sc.Conn, "deploy-worker-1"); err != nil {
		t.Fatal(err)
	}

	// The worker made its buckets itself, with its own permissions.
	js, err := jetstream.New(wc.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{"wxlogin_results", "wxlogin_ratelimit"} {
		testbed.Eventually(t, 10*time.Second, "bucket "+name, func() bool {
			_, err := js.KeyValue(ctx, name)
			return err == nil
		})
	}
	if st := w.Stats(); st.Requests != 1 || st.OK != 1 {
		t.Errorf("worker stats %+v, want one successful request", st)
	}

	// Every key-value operation the worker makes, by hand: create with a
	// per-key TTL, read, put (synchronous and asynchronous), delete.
	kv, err := bucket.OpenWithKeyTTLs(ctx, wc.Conn, jetstream.KeyValueConfig{
		Bucket: "wxlogin_results", History: 1, TTL: 5 * time.Minute,
		Storage: jetstream.MemoryStorage,
	})
	if err != nil {
		t.Fatalf("opening the results bucket as the worker: %v", err)
	}
	rev, err := kv.Create(ctx, "k1", []byte(`{"claim":true}`), jetstream.KeyTTL(2*time.Second))
	if err != nil {
		t.Fatalf("create with TTL: %v", err)
	}
	if _, err := kv.Get(ctx, "k1"); err != nil {
		t.Fatalf("get: %v", err)
	}
	if _, err := kv.Put(ctx, "k2", []byte(`{"openid":"o"}`)); err != nil {
		t.Fatalf("put: %v", err)
	}
	ack, err := js.PublishMsgAsync(&nats.Msg{Subject: "$KV.wxlogin_results.k3", Data: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ack.Ok():
	case err := <-ack.Err():
		t.Fatalf("asynchronous put: %v", err)
	case <-ctx.Done():
		t.Fatal("asynchronous put: no ack")
	}
	if err := kv.Delete(ctx, "k1", jetstream.LastRevision(rev)); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if v := wc.violations(); len(v) > 0 {
		t.Fatalf("the worker was refused something it needs: %v", v)
	}

	// Other streams are out of reach.
	wc.mustBeDenied(t, "worker creating another bucket", "$JS.API.STREAM.CREATE.KV_someone_else", func() error {
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		if _, err := js.CreateKeyValue(short, jetstream.KeyValueConfig{Bucket: "someone_else"}); err == nil {
			t.Error("the worker created a bucket that is not its own")
		}
		return nil
	})
	wc.mustBeDenied(t, "worker listening outside the queue group", "wxlogin.code2session", func() error {
		_, err := wc.Subscribe("wxlogin.code2session", func(*nats.Msg) {})
		return err
	})
	wc.mustBeDenied(t, "worker joining another queue", "wxlogin.code2session", func() error {
		_, err := wc.QueueSubscribe("wxlogin.code2session", "other", func(*nats.Msg) {})
		return err
	})
	wc.mustBeDenied(t, "worker asking for openids", "wxlogin.code2session", func() error {
		return wc.PublishRequest("wxlogin.code2session", wc.NewInbox(), []byte(`{"code":"x"}`))
	})
}

// TestServiceUser: another service asks for openids from its own account
// and can do nothing else.
func TestServiceUser(t *testing.T) {
	s := startDeployNATS(t)
	startWorker(t, s)
	sc := login(t, s, "service")
	res, err := ask(t, sc.Conn, "deploy-service-1")
	if err != nil || res.OpenID != fakewx.OpenID(testbed.App.AppID, "deploy-service-1") {
		t.Fatalf("service request: %v %+v", err, res)
	}
	// It checks the login token over NATS, errors and all.
	for tok, wantErr := range map[string]string{res.Token: "", "forged": "401"} {
		body, _ := json.Marshal(protocol.SessionRequest{Token: tok})
		reply, err := sc.Request(protocol.SessionSubject("wxlogin"), body, 3*time.Second)
		if err != nil {
			t.Fatalf("service asking wxlogin.session: %v", err)
		}
		var sess protocol.Session
		json.Unmarshal(reply.Data, &sess)
		if got := reply.Header.Get("Nats-Service-Error-Code"); got != wantErr || (wantErr == "" && sess.OpenID != res.OpenID) {
			t.Errorf("session for %.8s…: error code %q, %s", tok, got, reply.Data)
		}
	}
	if _, err := sc.Request(protocol.JWKSSubject("wxlogin"), nil, 3*time.Second); err != nil {
		t.Errorf("service asking wxlogin.jwks: %v", err)
	}
	sc.mustBeDenied(t, "service subscribing to the exchange", "wxlogin.code2session", func() error {
		_, err := sc.Subscribe("wxlogin.code2session", func(*nats.Msg) {})
		return err
	})
	sc.mustBeDenied(t, "service probing discovery", "$SRV.INFO.wxlogin", func() error { return sc.Publish("$SRV.INFO.wxlogin", nil) })

	// A trusted service: the login-token subjects and decrypt and phone.
	startStandIn(t, s)
	askAll(t, "service", sc.Conn)
	sc.mustBeDenied(t, "service answering decrypt", "wxlogin.decrypt", func() error {
		_, err := sc.QueueSubscribe("wxlogin.decrypt", protocol.QueueGroup, func(*nats.Msg) {})
		return err
	})
}

// TestTrustedSubjectsExports: decrypt and phone act for any openid, so
// the workers export them to EDGE and APPS only; another account, as an
// operator might add for a less trusted service, cannot import them,
// while the other requester subjects are open to it.
func TestTrustedSubjectsExports(t *testing.T) {
	s := startDeployNATS(t)
	wx, err := s.LookupAccount("WXLOGIN")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := s.LookupOrRegisterAccount("OTHER")
	for _, ep := range []string{"code2session", "session", "jwks"} {
		if err := other.AddServiceImport(wx, "wxlogin."+ep, ""); err != nil {
			t.Errorf("importing wxlogin.%s: %v", ep, err)
		}
	}
	for _, ep := range []string{"decrypt", "phone"} {
		if err := other.AddServiceImport(wx, "wxlogin."+ep, ""); !errors.Is(err, server.ErrServiceImportAuthorization) {
			t.Errorf("importing wxlogin.%s into another account: %v, want refused", ep, err)
		}
	}
}

// TestUnknownUserRefused: no user, a wrong password, or one user's
// password for another, gets nothing.
func TestUnknownUserRefused(t *testing.T) {
	s := startDeployNATS(t)
	for _, c := range []struct{ user, pw string }{{"edge", "wrong"}, {"worker", passwords["edge"]}, {"nobody", "x"}, {"", ""}} {
		nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(c.user, c.pw), nats.MaxReconnects(0))
		if err == nil {
			nc.Close()
			t.Errorf("user %q with password %q connected", c.user, c.pw)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
