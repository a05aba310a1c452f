package embednats_test

// A real embedded server with the all-in-one's accounts, a real worker and
// edge on their in-process credentials, and clients on the TCP listener as
// another local process would connect: each client can do its job, and
// the server refuses, or never delivers, what it has no business with.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/wechat"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// prefix has a dot, so that the buckets' names (dots to underscores) are
// covered too.
const prefix = "acme.login"

// stack is the all-in-one's NATS side: the server, its worker and its edge.
type stack struct {
	ns       *server.Server
	access   *embednats.Access
	worker   *exchange.Worker
	workerNC *nats.Conn
	edgeNC   *nats.Conn
	edgeURL  string
}

func startStack(t *testing.T, users map[string]string) *stack {
	t.Helper()
	access, err := embednats.NewAccess(prefix, users)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := embednats.Start(embednats.Options{Port: -1, JetStream: true, StoreDir: t.TempDir(), Access: access}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	st := &stack{ns: ns, access: access}

	upstream := httptest.NewServer(fakewx.New(fakewx.Config{Apps: []fakewx.App{testbed.App}}))
	t.Cleanup(upstream.Close)
	client, err := wechat.New(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	// The pool-wide rate limit is on, so that its bucket is made too.
	st.worker, err = exchange.New(exchange.Config{
		Apps: map[string]string{testbed.App.AppID: testbed.App.Secret}, SubjectPrefix: prefix,
		HTTPTimeout: 2 * time.Second, MaxAttempts: 1, Concurrency: 16, RequestTimeout: 5 * time.Second,
		Rate: 1000, ResultTTL: time.Minute, ClaimTTL: 3 * time.Second,
	}, client, quiet)
	if err != nil {
		t.Fatal(err)
	}
	st.workerNC = inProcess(t, ns, access.Worker())
	if err := st.worker.Start(st.workerNC, "0.0.0-test"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.worker.Shutdown() })

	st.edgeNC = inProcess(t, ns, access.Edge())
	srv := httptest.NewServer(edge.NewServer(edge.Config{Timeout: 5 * time.Second, MaxBody: 4096, SubjectPrefix: prefix}, st.edgeNC, quiet))
	t.Cleanup(srv.Close)
	st.edgeURL = srv.URL
	return st
}

func inProcess(t *testing.T, ns *server.Server, creds nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.InProcessServer(ns), creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// login asks for code's openid through the edge over HTTP.
func (st *stack) login(t *testing.T, code string) string {
	t.Helper()
	resp, err := http.Get(st.edgeURL + "/v1/openid?code=" + code)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res protocol.Result
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != 200 {
		t.Fatalf("login through the edge: %d %v", resp.StatusCode, err)
	}
	return res.OpenID
}

// client is a connection over TCP, as another local process makes it,
// with the server's permission errors collected.
type client struct {
	*nats.Conn
	mu     sync.Mutex
	denied []string
}

func connect(t *testing.T, st *stack, opts ...nats.Option) *client {
	t.Helper()
	c := &client{}
	opts = append(opts, nats.MaxReconnects(0), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			c.mu.Lock()
			c.denied = append(c.denied, err.Error())
			c.mu.Unlock()
		}
	}))
	nc, err := nats.Connect(st.ns.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.Conn = nc
	return c
}

func (c *client) violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.denied...)
}

// mustBeDenied runs do and waits for the server to report a permission
// violation that names subject.
func (c *client) mustBeDenied(t *testing.T, what, subject string, do func() error) {
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

// ask sends a request for code and returns the openid of the reply.
func ask(c *nats.Conn, subject, code string) (string, error) {
	data, _ := json.Marshal(protocol.Request{AppID: testbed.App.AppID, Code: code})
	reply, err := c.Request(subject, data, 5*time.Second)
	if err != nil {
		return "", err
	}
	res, e := protocol.DecodeReply(reply)
	if e != nil {
		return "", e
	}
	return res.OpenID, nil
}

// TestAnonymousRequester: a client without credentials gets openids from
// the worker, and the edge and worker work end to end with their buckets.
func TestAnonymousRequester(t *testing.T) {
	st := startStack(t, nil)
	anon := connect(t, st)
	got, err := ask(anon.Conn, prefix+".code2session", "anon-1")
	if err != nil || got != fakewx.OpenID(testbed.App.AppID, "anon-1") {
		t.Fatalf("anonymous request: %q %v", got, err)
	}
	// The other open subjects reach the worker's account: no worker
	// serves them yet, and "no responders" (not a permission error, not
	// a timeout) says the request got through.
	for _, ep := range []string{"session", "jwks"} {
		if _, err := anon.Request(prefix+"."+ep, nil, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("anonymous request to %s: %v, want no responders", ep, err)
		}
	}
	if v := anon.violations(); len(v) > 0 {
		t.Errorf("the anonymous requester was refused what it may do: %v", v)
	}

	if got := st.login(t, "edge-1"); got != fakewx.OpenID(testbed.App.AppID, "edge-1") {
		t.Fatalf("login through the edge: openid %q", got)
	}
	// The worker made both buckets in its account, with its credentials.
	js, err := jetstream.New(st.workerNC)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{"acme_login_results", "acme_login_ratelimit"} {
		testbed.Eventually(t, 10*time.Second, "bucket "+name, func() bool {
			_, err := js.KeyValue(ctx, name)
			return err == nil
		})
	}
	testbed.Eventually(t, 10*time.Second, "shared de-duplication and rate limit", func() bool {
		return st.worker.DedupMode() == "shared" && st.worker.RateMode() == "shared"
	})

	// The edge's readiness probe sees the worker through discovery.
	workers := edge.NewWorkers(st.edgeNC, prefix, edge.ProbeOptions{Interval: 50 * time.Millisecond, Window: 100 * time.Millisecond}, quiet)
	pctx, stop := context.WithCancel(context.Background())
	probing := make(chan struct{})
	go func() { defer close(probing); workers.Run(pctx) }()
	defer func() { stop(); <-probing }()
	testbed.Eventually(t, 5*time.Second, "the edge sees the worker", func() bool { ok, _ := workers.Ready(); return ok })
}

// TestAnonymousDenied: a client without credentials cannot listen to or
// answer the requests, reach JetStream, call the trusted subjects, or
// read the edge's replies.
func TestAnonymousDenied(t *testing.T) {
	st := startStack(t, nil)
	anon := connect(t, st)

	code2session := prefix + ".code2session"
	anon.mustBeDenied(t, "subscribing to the exchange", code2session, func() error {
		_, err := anon.Subscribe(code2session, func(*nats.Msg) {})
		return err
	})
	anon.mustBeDenied(t, "joining the workers' queue", code2session, func() error {
		_, err := anon.QueueSubscribe(code2session, protocol.QueueGroup, func(*nats.Msg) {})
		return err
	})
	for _, subject := range []string{prefix + ".>", "$SRV.>", "$SRV.INFO.wxlogin", "$KV.>", "$JS.API.>", ">"} {
		anon.mustBeDenied(t, "subscribing to "+subject, subject, func() error {
			_, err := anon.Subscribe(subject, func(*nats.Msg) {})
			return err
		})
	}
	for _, subject := range []string{"$JS.API.INFO", "$JS.API.STREAM.LIST", "$JS.API.STREAM.INFO.KV_acme_login_results",
		"$KV.acme_login_results.forged", "$SRV.PING.wxlogin", "$SRV.INFO.wxlogin", prefix + ".decrypt", prefix + ".phone"} {
		anon.mustBeDenied(t, "publishing to "+subject, subject, func() error {
			return anon.PublishRequest(subject, anon.NewRespInbox(), []byte(`{"openid":"o"}`))
		})
	}
	// Nor through the JetStream client: the bucket stays out of reach.
	js, err := jetstream.New(anon.Conn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := js.KeyValue(ctx, "acme_login_results"); err == nil {
		t.Error("an anonymous client opened the answers bucket")
	}

	// The edge's replies go to the edge's account. A sniffer on every
	// inbox first sees the edge's login, then makes its own request: the
	// worker sent the edge's reply before it got the sniffer's request,
	// so a leaked reply would arrive before the sniffer's own.
	sniffed, err := anon.SubscribeSync(nats.InboxPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	anon.Flush()
	if got := st.login(t, "sniffed-1"); got != fakewx.OpenID(testbed.App.AppID, "sniffed-1") {
		t.Fatalf("login through the edge: openid %q", got)
	}
	if _, err := ask(anon.Conn, code2session, "sniffer-1"); err != nil {
		t.Fatal(err)
	}
	m, err := sniffed.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("the sniffer's own reply: %v", err)
	}
	if res, _ := protocol.DecodeReply(m); res.OpenID != fakewx.OpenID(testbed.App.AppID, "sniffer-1") {
		t.Fatalf("an anonymous client read someone else's reply: %s", m.Data)
	}
}

// TestServiceUsers: the operator's users log in with a password or
// against a bcrypt hash, call the trusted subjects too, and cannot read
// each other's replies; a wrong password gets nothing.
func TestServiceUsers(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("crm-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	st := startStack(t, map[string]string{"billing": "billing-pw", "crm": string(hash)})
	// A stand-in for the trusted endpoints, in the worker's account.
	for _, ep := range []string{"decrypt", "phone"} {
		sub, err := st.workerNC.QueueSubscribe(prefix+"."+ep, protocol.QueueGroup, func(m *nats.Msg) {
			m.Respond([]byte(ep + " for " + string(m.Data)))
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	st.workerNC.Flush()

	billing := connect(t, st, nats.UserInfo("billing", "billing-pw"))
	crm := connect(t, st, nats.UserInfo("crm", "crm-pw"))
	for _, c := range []*client{billing, crm} {
		for _, ep := range []string{"decrypt", "phone"} {
			reply, err := c.Request(prefix+"."+ep, []byte("x"), 5*time.Second)
			if err != nil || string(reply.Data) != ep+" for x" {
				t.Fatalf("service request to %s: %v", ep, err)
			}
		}
		if got, err := ask(c.Conn, prefix+".code2session", "svc-"+c.Opts.User); err != nil || got != fakewx.OpenID(testbed.App.AppID, "svc-"+c.Opts.User) {
			t.Fatalf("service %s asking for an openid: %q %v", c.Opts.User, got, err)
		}
	}
	// So does the edge.
	if reply, err := st.edgeNC.Request(prefix+".decrypt", []byte("e"), 5*time.Second); err != nil || string(reply.Data) != "decrypt for e" {
		t.Fatalf("edge request to decrypt: %v", err)
	}

	// Each service has its account: crm, listening on every inbox, sees
	// its own reply but never billing's, which the stand-in sent first.
	sniffed, err := crm.SubscribeSync(nats.InboxPrefix + ">")
	if err != nil {
		t.Fatal(err)
	}
	crm.Flush()
	if _, err := billing.Request(prefix+".decrypt", []byte("billing"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := crm.Request(prefix+".decrypt", []byte("crm"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	m, err := sniffed.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("crm's own reply: %v", err)
	}
	if string(m.Data) != "decrypt for crm" {
		t.Fatalf("crm read %q on its inboxes, want only its own reply", m.Data)
	}
	for _, c := range []*client{billing, crm} {
		c.mustBeDenied(t, c.Opts.User+" subscribing to decrypt", prefix+".decrypt", func() error {
			_, err := c.Subscribe(prefix+".decrypt", func(*nats.Msg) {})
			return err
		})
		c.mustBeDenied(t, c.Opts.User+" reaching JetStream", "$JS.API.INFO", func() error { return c.Publish("$JS.API.INFO", nil) })
	}

	// Wrong passwords, the hash itself, and a user not in the file fail.
	for _, creds := range [][2]string{{"billing", "wrong"}, {"crm", string(hash)}, {"crm", "billing-pw"}, {"nobody", "x"}} {
		if nc, err := nats.Connect(st.ns.ClientURL(), nats.UserInfo(creds[0], creds[1]), nats.MaxReconnects(0)); err == nil {
			nc.Close()
			t.Errorf("user %q connected with a wrong password", creds[0])
		}
	}
	// The exports themselves name who may import the trusted subjects:
	// an account the server did not list (as if an import were added to
	// the anonymous one) is refused.
	wx, err := st.ns.LookupAccount(embednats.AccountWorker)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := st.ns.LookupOrRegisterAccount("OTHER")
	for _, ep := range []string{"decrypt", "phone"} {
		if err := other.AddServiceImport(wx, prefix+"."+ep, ""); !errors.Is(err, server.ErrServiceImportAuthorization) {
			t.Errorf("an unlisted account importing %s: %v, want refused", ep, err)
		}
	}

	// An anonymous client asking for decrypt gets no answer.
	anon := connect(t, st)
	anon.mustBeDenied(t, "anonymous decrypt", prefix+".decrypt", func() error {
		_, err := anon.Request(prefix+".decrypt", []byte("x"), 200*time.Millisecond)
		if !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("anonymous decrypt: %v, want a refusal", err)
		}
		return nil
	})
}

// TestNewAccessRefusesEmptyUsers: a user without a name or a password
// would be an open door with another name.
func TestNewAccessRefusesEmptyUsers(t *testing.T) {
	for _, users := range []map[string]string{{"": "pw"}, {"svc": ""}} {
		if _, err := embednats.NewAccess(prefix, users); err == nil {
			t.Errorf("NewAccess(%v) accepted it", users)
		}
	}
}
