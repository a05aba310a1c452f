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

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

// TestTokensSurviveRestart: the all-in-one with NATS_STORE_DIR keeps its
// generated key there (0600), so a token minted before a restart is still
// good after it.
func TestTokensSurviveRestart(t *testing.T) {
	store := t.TempDir()
	t.Setenv("NATS_STORE_DIR", store)
	t.Setenv("WORKER_METRICS_ADDR", "")

	var tok string
	for round, code := range []string{"before-restart", "after-restart"} {
		edgeAddr := testbed.FreeAddr(t)
		t.Setenv("EDGE_ADDR", edgeAddr)
		t.Setenv("NATS_LISTEN", testbed.FreeAddr(t))
		logs := &testbed.Buffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, logs) }()
		base := "http://" + edgeAddr
		testbed.Eventually(t, 10*time.Second, "readyz", func() bool { return testbed.HTTPStatus(base+"/readyz") == 200 })

		res := getJSON[protocol.Result](t, base+"/v1/openid?code="+code, "")
		if res.Token == "" || res.ExpiresIn != 7200 {
			t.Errorf("round %d: reply %+v, want a token and expires_in 7200", round, res)
		}
		if round == 0 {
			tok = res.Token
		}
		if s := getJSON[protocol.Session](t, base+"/v1/session", tok); s.OpenID == "" {
			t.Errorf("round %d: the first token is not good", round)
		}
		if strings.Contains(logs.String(), "do not survive a restart") {
			t.Error("warns that tokens do not survive a restart though NATS_STORE_DIR is set")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(store, token.StoredKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stored key: %v %v", fi, err)
	}
}

func getJSON[T any](t *testing.T, u, bearer string) T {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var v T
	if resp.StatusCode != 200 || json.Unmarshal(body, &v) != nil {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	return v
}
