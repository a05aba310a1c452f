package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	js, _ := jetstream.New(nc)
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Errorf("JetStream is not on in the embedded server: %v", err)
	}

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
