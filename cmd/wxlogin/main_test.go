package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// TestFirstRun is what a newcomer does: start with no configuration but
// addresses, read the log, curl the code it suggests, get an openid; other
// services reach the same workers through the embedded NATS server.
func TestFirstRun(t *testing.T) {
	edgeAddr, natsAddr := testbed.FreeAddr(t), testbed.FreeAddr(t)
	t.Setenv("EDGE_ADDR", edgeAddr)
	t.Setenv("NATS_LISTEN", natsAddr)
	t.Setenv("WORKER_METRICS_ADDR", "127.0.0.1:0")
	t.Setenv("NATS_STORE_DIR", t.TempDir())
	logs := &testbed.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, logs) }()
	t.Cleanup(cancel)

	base := "http://" + edgeAddr
	testbed.Eventually(t, 10*time.Second, "readyz", func() bool { return testbed.HTTPStatus(base+"/readyz") == 200 })
	if !strings.Contains(logs.String(), "DEMO MODE") || !strings.Contains(logs.String(), base+"/v1/openid?code=demo-code-1") {
		t.Fatalf("the log does not tell a newcomer what to curl:\n%s", logs)
	}
	resp, err := http.Get(base + "/v1/openid?code=demo-code-1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var res protocol.Result
	json.Unmarshal(body, &res)
	if resp.StatusCode != 200 || res.OpenID != fakewx.OpenID(fakewx.DemoAppID, "demo-code-1") {
		t.Fatalf("got %d %s", resp.StatusCode, body)
	}

	// One /metrics on the edge shows edge and worker.
	mresp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mbody, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{`wxlogin_edge_requests_total{outcome="ok"} 1`, `wxlogin_worker_requests_total{appid="` + fakewx.DemoAppID + `",outcome="ok"} 1`} {
		if !strings.Contains(string(mbody), want) {
			t.Errorf("all-in-one /metrics lacks %s", want)
		}
	}

	// Another service, over the embedded server's TCP listener.
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reply, err := nc.Request("wxlogin.code2session", []byte(`{"code":"from-a-service"}`), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res, e := protocol.DecodeReply(reply); e != nil || res.OpenID != fakewx.OpenID(fakewx.DemoAppID, "from-a-service") {
		t.Fatalf("over NATS: %v %+v", e, res)
	}
	// JetStream is on for the worker, behind its account: the answers
	// are shared through its bucket.
	testbed.Eventually(t, 10*time.Second, "de-duplication through JetStream", func() bool {
		return strings.Contains(httpBody(t, base+"/metrics"), "\nwxlogin_dedup_shared 1\n")
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if testbed.HTTPStatus(base+"/healthz") != 0 {
		t.Error("edge still answering after shutdown")
	}
}

// TestAnonymousCannotAnswerLogins is the attack of issue 14: a local
// process connects to NATS_LISTEN without credentials, listens on the
// exchange subject and answers every login at once with an openid of its
// choosing, before the worker can. The server refuses the subscription,
// so the attacker sees no code and every login gets its real openid.
// Users of NATS_USERS_FILE may call what anonymous clients may not.
func TestAnonymousCannotAnswerLogins(t *testing.T) {
	usersFile := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(usersFile, []byte("# trusted services\nbilling: billing-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base, natsAddr := startAllInOne(t, map[string]string{"NATS_USERS_FILE": usersFile})

	denied := make(chan string, 16)
	attacker, err := nats.Connect("nats://"+natsAddr, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			denied <- err.Error()
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	var seen atomic.Int64
	forge := func(m *nats.Msg) {
		seen.Add(1)
		m.Respond([]byte(`{"openid":"forged"}`))
	}
	if _, err := attacker.Subscribe("wxlogin.code2session", forge); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatal(err)
	}
	if _, err := attacker.QueueSubscribe("wxlogin.code2session", "wxlogin", forge); err != nil && !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatal(err)
	}
	attacker.Flush()
	for i := range 10 {
		code := fmt.Sprintf("attacked-%d", i)
		if got := httpBody(t, base+"/v1/openid?code="+code); !strings.Contains(got, `"openid":"`+fakewx.OpenID(fakewx.DemoAppID, code)+`"`) {
			t.Errorf("login %d: %s, want the real openid", i, got)
		}
	}
	for range 2 {
		select {
		case v := <-denied:
			if !strings.Contains(v, `"wxlogin.code2session"`) {
				t.Errorf("unexpected refusal: %s", v)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the server did not refuse the attacker's subscriptions")
		}
	}
	if n := seen.Load(); n > 0 {
		t.Errorf("the attacker saw %d login requests", n)
	}

	// The trusted subjects: refused without credentials; with the users
	// file's credentials the request gets through (no worker serves it
	// yet, hence "no responders" instead of a refusal).
	if _, err := attacker.Request("wxlogin.decrypt", nil, 200*time.Millisecond); errors.Is(err, nats.ErrNoResponders) {
		t.Error("an anonymous request to wxlogin.decrypt got through")
	}
	billing, err := nats.Connect("nats://"+natsAddr, nats.UserInfo("billing", "billing-pw"))
	if err != nil {
		t.Fatalf("users file credentials: %v", err)
	}
	defer billing.Close()
	if _, err := billing.Request("wxlogin.decrypt", nil, 5*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("billing's request to wxlogin.decrypt: %v, want no responders", err)
	}
}

// startAllInOne runs the all-in-one with env on free addresses until the
// test ends, and returns its edge's base URL and its NATS address.
func startAllInOne(t *testing.T, env map[string]string) (base, natsAddr string) {
	t.Helper()
	edgeAddr, natsAddr := testbed.FreeAddr(t), testbed.FreeAddr(t)
	t.Setenv("EDGE_ADDR", edgeAddr)
	t.Setenv("NATS_LISTEN", natsAddr)
	t.Setenv("WORKER_METRICS_ADDR", "127.0.0.1:0")
	t.Setenv("NATS_STORE_DIR", t.TempDir())
	for k, v := range env {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	base = "http://" + edgeAddr
	testbed.Eventually(t, 10*time.Second, "readyz", func() bool { return testbed.HTTPStatus(base+"/readyz") == 200 })
	return base, natsAddr
}

// httpBody is the body of GET u.
func httpBody(t *testing.T, u string) string {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestBadSettingStopsAtStart(t *testing.T) {
	t.Setenv("EDGE_TIMEOUT", "soon")
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "EDGE_TIMEOUT") {
		t.Fatalf("got %v, want an error naming EDGE_TIMEOUT", err)
	}
}

func TestBadCAFileStopsAtStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, []byte("TOPSECRET, not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WX_CA_FILE", path)
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "WX_CA_FILE") || strings.Contains(err.Error(), "TOPSECRET") {
		t.Fatalf("got %v, want an error naming WX_CA_FILE without the file's content", err)
	}
}

func TestHelpListsVariables(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"-h"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"WX_APPS", "NATS_LISTEN", "EDGE_ADDR", "WX_RATE", "WX_CA_FILE"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("usage lacks %s:\n%s", v, out.String())
		}
	}
}
