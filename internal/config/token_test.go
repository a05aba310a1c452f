package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTokensSection(t *testing.T) {
	clearEnv(t)
	t.Setenv("WX_APPS", "wx1:"+secretA)
	var w WorkerConfig
	if err := Load(&w); err != nil {
		t.Fatal(err)
	}
	if w.Tokens != (Tokens{TTL: 2 * time.Hour, Issuer: "wxlogin"}) {
		t.Errorf("worker token defaults: %+v", w.Tokens)
	}
	var a AllInOneConfig
	if err := Load(&a); err != nil {
		t.Fatal(err)
	}
	if a.Tokens != (Tokens{TTL: 2 * time.Hour, Issuer: "wxlogin"}) {
		t.Errorf("all-in-one token defaults: %+v", a.Tokens)
	}

	// Validation checks values only: it does not read the key file, which
	// the binary loads in a step of its own.
	missing := filepath.Join(t.TempDir(), "absent.pem")
	setenv(t, map[string]string{"WX_TOKEN_KEY_FILE": missing, "WX_TOKEN_TTL": "1s", "WX_TOKEN_ISSUER": "https://login.example.com"})
	if err := Load(&w); err != nil {
		t.Fatalf("a key file path is not checked by Load: %v", err)
	}
	if w.Tokens.KeyFile != missing || w.Tokens.TTL != time.Second || w.Tokens.Issuer != "https://login.example.com" {
		t.Errorf("%+v", w.Tokens)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("the absent file exists")
	}

	for env, bad := range map[string]string{"WX_TOKEN_TTL": "999ms", "WX_TOKEN_ISSUER": ""} {
		t.Run(env, func(t *testing.T) {
			t.Setenv(env, bad)
			var c WorkerConfig
			if err := Load(&c); err == nil || !strings.Contains(err.Error(), env) {
				t.Errorf("got %v, want an error naming %s", err, env)
			}
		})
	}
}
