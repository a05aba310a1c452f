package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The worker's store settings: the key its stored values are sealed
// with, the buckets' byte limits and how short answers may live.
func TestWorkerStoreSettings(t *testing.T) {
	const storeKey = "SECRET-store-key-0123456789abcdef0123"
	load := func(env map[string]string) (WorkerConfig, error) {
		clearEnv(t)
		t.Setenv("WX_APPS", "wx1:"+secretA)
		setenv(t, env)
		var c WorkerConfig
		return c, Load(&c)
	}
	c, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.StoreKeySecret() != nil || c.KVMaxBytes != 64<<20 || c.RateKVMaxBytes != 8<<20 || c.ResultTTL != 5*time.Minute {
		t.Errorf("defaults: key %v, answers %d bytes, rate %d bytes, TTL %v", c.StoreKeySecret() != nil, c.KVMaxBytes, c.RateKVMaxBytes, c.ResultTTL)
	}
	if c, err = load(map[string]string{"WX_STORE_KEY": storeKey, "WX_RESULT_TTL": "10s"}); err != nil || string(c.StoreKeySecret()) != storeKey || c.ResultTTL != 10*time.Second {
		t.Errorf("WX_STORE_KEY and a 10s TTL: %v", err)
	}
	file := filepath.Join(t.TempDir(), "store-key")
	if err := os.WriteFile(file, []byte(storeKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = load(map[string]string{"WX_STORE_KEY_FILE": file}); err != nil || string(c.StoreKeySecret()) != storeKey {
		t.Errorf("WX_STORE_KEY_FILE: %v", err)
	}
	for name, env := range map[string]map[string]string{
		"WX_STORE_KEY":             {"WX_STORE_KEY": "SECRET-short"},
		"WX_STORE_KEY_FILE":        {"WX_STORE_KEY_FILE": filepath.Join(t.TempDir(), "missing")},
		"WX_STORE_KEY and":         {"WX_STORE_KEY": storeKey, "WX_STORE_KEY_FILE": file},
		"WX_RESULT_TTL":            {"WX_RESULT_TTL": "9s"},
		"WORKER_KV_MAX_BYTES":      {"WORKER_KV_MAX_BYTES": "1000"},
		"WORKER_RATE_KV_MAX_BYTES": {"WORKER_RATE_KV_MAX_BYTES": "0"},
	} {
		_, err := load(env)
		checkErr(t, err, name)
		if err != nil && strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%s: the error shows the key: %v", name, err)
		}
	}
}
