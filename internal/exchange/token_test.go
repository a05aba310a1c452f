package exchange_test

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

func issuer(t *testing.T, ttl time.Duration) *token.Issuer {
	t.Helper()
	k, err := token.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	iss, err := token.NewIssuer([]token.Key{k}, token.Options{Issuer: "wxlogin", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

// TestTokensOverNATS: every success carries a token naming the user and
// the app; a repeated code gets a new token for the same user, which
// de-duplication did not store; the JWKS endpoint verifies them.
func TestTokensOverNATS(t *testing.T) {
	b := testbed.New(t, testbed.Options{Apps: []fakewx.App{testbed.App, testbed.App2}})
	cfg := b.WorkerConfig(testbed.App, testbed.App2)
	cfg.Tokens = issuer(t, 2*time.Hour)
	b.StartWorker(cfg)
	nc := b.Connect("client")

	reply, err := nc.Request(protocol.JWKSSubject(protocol.DefaultSubjectPrefix), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.ParseJWKS(reply.Data, "wxlogin")
	if err != nil {
		t.Fatalf("PREFIX.jwks: %v (%s)", err, reply.Data)
	}

	seen := map[string]bool{}
	for _, app := range []fakewx.App{testbed.App, testbed.App2} {
		for range 2 { // the second is a retry, answered by de-duplication
			res, e := b.Request(nc, protocol.Request{AppID: app.AppID, Code: "tok-" + app.AppID}, 3*time.Second)
			if e != nil {
				t.Fatal(e)
			}
			if res.Token == "" || seen[res.Token] {
				t.Fatalf("token %q: empty or repeated", res.Token)
			}
			seen[res.Token] = true
			if res.ExpiresIn < 7190 || res.ExpiresIn > 7200 {
				t.Errorf("expires_in %d, want about 7200", res.ExpiresIn)
			}
			s, err := v.Verify(res.Token)
			if err != nil {
				t.Fatal(err)
			}
			if s.AppID != app.AppID || s.OpenID != fakewx.OpenID(app.AppID, "tok-"+app.AppID) || s.UnionID != res.UnionID {
				t.Errorf("token says %+v; reply %+v for app %s", s, res, app.AppID)
			}
		}
	}
	if n := b.Fake.Calls("tok-" + testbed.App.AppID); n != 1 {
		t.Errorf("upstream saw the code %d times, want 1 (the retry must come from de-duplication)", n)
	}
}

func TestSessionOverNATS(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	cfg.Tokens = issuer(t, time.Hour)
	b.StartWorker(cfg)
	nc := b.Connect("client")
	res, e := b.Request(nc, protocol.Request{Code: "session-1"}, 3*time.Second)
	if e != nil {
		t.Fatal(e)
	}
	ask := func(body string) *nats.Msg {
		t.Helper()
		m, err := nc.Request(protocol.SessionSubject(protocol.DefaultSubjectPrefix), []byte(body), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := ask(`{"token":"` + res.Token + `"}`)
	var s protocol.Session
	if m.Header.Get(micro.ErrorCodeHeader) != "" || json.Unmarshal(m.Data, &s) != nil {
		t.Fatalf("valid token refused: %v %s", m.Header, m.Data)
	}
	if s.OpenID != res.OpenID || s.AppID != testbed.App.AppID || s.UnionID != res.UnionID ||
		s.ExpiresAt < time.Now().Add(time.Hour-time.Minute).Unix() {
		t.Errorf("session %+v for %+v", s, res)
	}

	other := issuer(t, time.Hour)
	foreign, _, _ := other.Mint(testbed.App.AppID, res.OpenID, "")
	altered := res.Token[:len(res.Token)-3] + "AAA"
	for name, body := range map[string]string{
		"missing": `{}`, "malformed": `{"token":"x.y.z"}`, "altered": `{"token":"` + altered + `"}`,
		"unpublished key": `{"token":"` + foreign + `"}`,
	} {
		m := ask(body)
		var eb protocol.ErrorBody
		json.Unmarshal(m.Data, &eb)
		if m.Header.Get(micro.ErrorCodeHeader) != "401" || eb.Error != protocol.KindInvalidToken || eb.Retry != protocol.RetryNewCode {
			t.Errorf("%s: %v %s", name, m.Header, m.Data)
		}
	}
	if m := ask(`not json`); m.Header.Get(micro.ErrorCodeHeader) != "400" {
		t.Errorf("garbage body: %v %s", m.Header, m.Data)
	}
	if strings.Contains(b.Logs.String(), res.Token) {
		t.Error("a token reached the log")
	}
}

// TestNoTokensWithoutKey: a worker without WX_TOKEN_KEY_FILE replies as
// before and serves no token endpoints.
func TestNoTokensWithoutKey(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	b.StartWorker(b.WorkerConfig())
	nc := b.Connect("client")
	res, e := b.Request(nc, protocol.Request{Code: "no-token-1"}, 3*time.Second)
	if e != nil || res.Token != "" || res.ExpiresIn != 0 {
		t.Fatalf("%+v %v", res, e)
	}
	if _, err := nc.Request(protocol.JWKSSubject(protocol.DefaultSubjectPrefix), nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("PREFIX.jwks without keys: %v, want no responders", err)
	}
}

func TestLoadTokens(t *testing.T) {
	var logs testbed.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	cfg := config.Tokens{TTL: time.Hour, Issuer: "wxlogin"}

	// cmd/worker without a key file: off, and said so.
	if iss, err := exchange.LoadTokens(cfg, false, "", logger); iss != nil || err != nil {
		t.Fatalf("worker without key file: %v %v", iss, err)
	}
	if !strings.Contains(logs.String(), "login tokens are OFF") {
		t.Errorf("the worker does not say tokens are off:\n%s", logs.String())
	}
	// The all-in-one without a store dir: a fresh key, and a warning once.
	a, err := exchange.LoadTokens(cfg, true, "", logger)
	if err != nil || a == nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "do not survive a restart"); n != 1 {
		t.Errorf("restart warning logged %d times", n)
	}
	// With a store dir: the same key after a restart.
	dir := t.TempDir()
	first, err := exchange.LoadTokens(cfg, true, dir, logger)
	if err != nil {
		t.Fatal(err)
	}
	second, err := exchange.LoadTokens(cfg, true, dir, logger)
	if err != nil || second.KID() != first.KID() {
		t.Fatalf("the stored key is not reused: %v", err)
	}
	// A key file wins, and its first key signs.
	k1, _ := token.GenerateKey()
	k2, _ := token.GenerateKey()
	pem, _ := token.EncodePEM(k1, k2)
	file := filepath.Join(t.TempDir(), "keys.pem")
	os.WriteFile(file, pem, 0o600)
	cfg.KeyFile = file
	fromFile, err := exchange.LoadTokens(cfg, true, dir, logger)
	if err != nil || fromFile.KID() != k1.KID() {
		t.Fatalf("key file: %v", err)
	}
	if material := strings.Split(string(pem), "\n")[1]; strings.Contains(logs.String(), material) {
		t.Error("the key reached the log")
	}
}
