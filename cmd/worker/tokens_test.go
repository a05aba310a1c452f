package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

// TestTokenKeyFile: with WX_TOKEN_KEY_FILE the worker signs with the
// file's first key and publishes both; without it, it says at start that
// replies carry no token.
func TestTokenKeyFile(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	k1, _ := token.GenerateKey()
	k2, _ := token.GenerateKey()
	pem, _ := token.EncodePEM(k1, k2)
	keyFile := filepath.Join(t.TempDir(), "token-keys.pem")
	if err := os.WriteFile(keyFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NATS_URL", b.NATS.ClientURL())
	t.Setenv("WX_APPS", testbed.App.AppID+":"+testbed.App.Secret)
	t.Setenv("WX_API_BASE", b.Upstream.URL)
	t.Setenv("WORKER_METRICS_ADDR", "")
	t.Setenv("WX_TOKEN_TTL", "90s")

	for _, withKey := range []bool{true, false} {
		if withKey {
			t.Setenv("WX_TOKEN_KEY_FILE", keyFile)
		} else {
			t.Setenv("WX_TOKEN_KEY_FILE", "")
		}
		logs := &testbed.Buffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx, nil, logs) }()
		nc := b.Connect("client")
		var res protocol.Result
		var e *protocol.Error
		code := "worker-token-" + map[bool]string{true: "on", false: "off"}[withKey]
		testbed.Eventually(t, 10*time.Second, "an answer", func() bool {
			res, e = b.Request(nc, protocol.Request{Code: code}, 2*time.Second)
			return e == nil || e.Kind != protocol.KindUnavailable
		})
		if e != nil {
			t.Fatal(e)
		}
		if withKey {
			if kid, _ := token.KeyID(res.Token); kid != k1.KID() || res.ExpiresIn != 90 {
				t.Errorf("token kid %q expires_in %d, want %s and 90", kid, res.ExpiresIn, k1.KID())
			}
			reply, err := nc.Request(protocol.JWKSSubject("wxlogin"), nil, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			v, err := token.ParseJWKS(reply.Data, "wxlogin")
			if err != nil || !v.Has(k1.KID()) || !v.Has(k2.KID()) {
				t.Errorf("PREFIX.jwks %s: %v", reply.Data, err)
			}
		} else {
			if res.Token != "" {
				t.Error("a token without WX_TOKEN_KEY_FILE")
			}
			if !strings.Contains(logs.String(), "login tokens are OFF") {
				t.Errorf("the worker does not say tokens are off:\n%s", logs)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadTokenSettingsStopAtStart(t *testing.T) {
	t.Setenv("WX_APPS", "wxa:secret")
	t.Setenv("WX_TOKEN_TTL", "500ms")
	if err := run(context.Background(), nil, os.Stderr); err == nil || !strings.Contains(err.Error(), "WX_TOKEN_TTL") {
		t.Errorf("got %v, want an error naming WX_TOKEN_TTL", err)
	}
	t.Setenv("WX_TOKEN_TTL", "1h")
	bad := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(bad, []byte("-----BEGIN PRIVATE KEY-----\nTOPSECRET\n-----END PRIVATE KEY-----\n"), 0o600)
	t.Setenv("WX_TOKEN_KEY_FILE", bad)
	if err := run(context.Background(), nil, os.Stderr); err == nil || !strings.Contains(err.Error(), "WX_TOKEN_KEY_FILE") || strings.Contains(err.Error(), "TOPSECRET") {
		t.Errorf("got %v, want an error naming WX_TOKEN_KEY_FILE without the file's content", err)
	}
}
