package config

import (
	"github.com/kelseyhightower/envconfig"

	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 14's settings: safe defaults, and refusals that name the variable.

func TestEdgeSecurityDefaults(t *testing.T) {
	clearEnv(t)
	var c EdgeConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	e := c.Edge
	if !e.AllowGet || e.MaxConns != 4096 || e.IdleTimeout != 30*time.Second || e.MetricsAddr != "" {
		t.Errorf("edge defaults: allow get %v, max conns %d, idle %v, metrics %q", e.AllowGet, e.MaxConns, e.IdleTimeout, e.MetricsAddr)
	}
	for _, a := range []string{"127.0.0.1", "::1", "10.1.2.3", "172.31.0.1", "192.168.9.9", "fd00::1"} {
		if !contains(e.TrustedProxies, a) {
			t.Errorf("default EDGE_TRUSTED_PROXIES lacks %s: %v", a, e.TrustedProxies)
		}
	}
	for _, a := range []string{"8.8.8.8", "172.32.0.1", "2001:db8::1"} {
		if contains(e.TrustedProxies, a) {
			t.Errorf("default EDGE_TRUSTED_PROXIES holds public %s", a)
		}
	}
}

func contains(ps Prefixes, addr string) bool {
	a := netip.MustParseAddr(addr)
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func TestEdgeSecuritySettings(t *testing.T) {
	clearEnv(t)
	setenv(t, map[string]string{
		"EDGE_ALLOW_GET": "false", "EDGE_MAX_CONNS": "10", "EDGE_IDLE_TIMEOUT": "5s",
		"EDGE_METRICS_ADDR": ":9090", "EDGE_TRUSTED_PROXIES": "203.0.113.0/24, 198.51.100.7",
	})
	var c EdgeConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if c.AllowGet || c.MaxConns != 10 || c.IdleTimeout != 5*time.Second || c.MetricsAddr != ":9090" {
		t.Errorf("got %+v", c.Edge)
	}
	if !contains(c.TrustedProxies, "203.0.113.9") || !contains(c.TrustedProxies, "198.51.100.7") ||
		contains(c.TrustedProxies, "198.51.100.8") || contains(c.TrustedProxies, "10.0.0.1") {
		t.Errorf("EDGE_TRUSTED_PROXIES = %v", c.TrustedProxies)
	}
}

func TestSecurityRefusals(t *testing.T) {
	edge := func() any { return &EdgeConfig{} }
	worker := func() any { return &WorkerConfig{} }
	allInOne := func() any { return &AllInOneConfig{} }
	for _, tc := range []struct {
		name string
		spec func() any
		env  map[string]string
		want string // "" means valid
	}{
		{"max conns zero", edge, map[string]string{"EDGE_MAX_CONNS": "0"}, "EDGE_MAX_CONNS"},
		{"idle timeout zero", edge, map[string]string{"EDGE_IDLE_TIMEOUT": "0s"}, "EDGE_IDLE_TIMEOUT"},
		{"metrics addr garbage", edge, map[string]string{"EDGE_METRICS_ADDR": "9090"}, "EDGE_METRICS_ADDR"},
		{"metrics addr is the public one", edge, map[string]string{"EDGE_METRICS_ADDR": ":8080"}, "EDGE_METRICS_ADDR"},
		{"trusted proxies garbage", edge, map[string]string{"EDGE_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "EDGE_TRUSTED_PROXIES"},
		{"allow get garbage", edge, map[string]string{"EDGE_ALLOW_GET": "maybe"}, "EDGE_ALLOW_GET"},

		{"debug on every interface", edge, map[string]string{"DEBUG_ADDR": ":6060"}, "DEBUG_ALLOW_REMOTE"},
		{"debug on a public address", worker, map[string]string{"DEBUG_ADDR": "0.0.0.0:6060"}, "DEBUG_ALLOW_REMOTE"},
		{"debug on a private address", allInOne, map[string]string{"DEBUG_ADDR": "10.0.0.1:6060"}, "DEBUG_ALLOW_REMOTE"},
		{"debug on loopback", edge, map[string]string{"DEBUG_ADDR": "127.0.0.1:6060"}, ""},
		{"debug on ::1", edge, map[string]string{"DEBUG_ADDR": "[::1]:0"}, ""},
		{"debug on localhost", worker, map[string]string{"DEBUG_ADDR": "localhost:6060"}, ""},
		{"debug remote allowed", edge, map[string]string{"DEBUG_ADDR": ":6060", "DEBUG_ALLOW_REMOTE": "true"}, ""},

		{"api base plain http", worker, map[string]string{"WX_API_BASE": "http://api.weixin.qq.com"}, "WX_API_BASE"},
		{"api base plain http to a private host", allInOne, map[string]string{"WX_API_BASE": "http://fakewx:9400"}, "WX_API_BASE"},
		{"api base plain http, loopback lookalike", worker, map[string]string{"WX_API_BASE": "http://127.0.0.1.example.com"}, "WX_API_BASE"},
		{"api base http loopback", worker, map[string]string{"WX_API_BASE": "http://127.0.0.2:9400"}, ""},
		{"api base http ::1", worker, map[string]string{"WX_API_BASE": "http://[::1]:9400"}, ""},
		{"api base http localhost", worker, map[string]string{"WX_API_BASE": "http://localhost:9400"}, ""},
		{"api base https", worker, map[string]string{"WX_API_BASE": "https://gateway.internal"}, ""},

		{"app secret placeholder", worker, map[string]string{"WX_APPS": "wx1:CHANGE-ME-app-secret"}, "WX_APPS"},
		{"app secret placeholder all-in-one", allInOne, map[string]string{"WX_APPS": "wx1:" + secretA + ",wx2:change-me"}, "WX_APPS"},
		{"nats password placeholder", edge, map[string]string{"NATS_USER": "edge", "NATS_PASSWORD": "CHANGE-ME-edge-nats-password"}, "NATS_PASSWORD"},
		{"nats token placeholder", worker, map[string]string{"NATS_TOKEN": "CHANGE-ME"}, "NATS_TOKEN"},
		{"nats url password placeholder", edge, map[string]string{"NATS_URL": "nats://edge:CHANGE-ME-pw@nats:4222"}, "NATS_URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			if tc.env["WX_APPS"] == "" {
				t.Setenv("WX_APPS", "wx1:"+secretA)
			}
			setenv(t, tc.env)
			err := Load(tc.spec())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			checkErr(t, err, tc.want)
			if strings.Contains(err.Error(), "CHANGE-ME-") || strings.Contains(strings.ToLower(err.Error()), "change-me\"") {
				t.Errorf("the error repeats the placeholder's value: %v", err)
			}
		})
	}
}

// TestPlaceholderFiles: a secret mounted from a file is refused while it
// is still a placeholder, naming the variable and never the value.
func TestPlaceholderFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	apps := filepath.Join(dir, "apps")
	os.WriteFile(pw, []byte("CHANGE-ME-worker-nats-password\n"), 0o600)
	os.WriteFile(apps, []byte("# CHANGE-ME: a comment is fine\nwx1:"+secretA+"\nwx0:CHANGE-ME-app-secret-77\n"), 0o600)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"password file", map[string]string{"WX_APPS": "wx1:" + secretA, "NATS_USER": "worker", "NATS_PASSWORD_FILE": pw}, "NATS_PASSWORD_FILE"},
		{"token file", map[string]string{"WX_APPS": "wx1:" + secretA, "NATS_TOKEN_FILE": pw}, "NATS_TOKEN_FILE"},
		{"apps file", map[string]string{"WX_APPS_FILE": apps}, "WX_APPS_FILE: still a CHANGE-ME"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			setenv(t, tc.env)
			err := Load(&WorkerConfig{})
			checkErr(t, err, tc.want)
			if strings.Contains(err.Error(), "password") && strings.Contains(err.Error(), "worker-nats") ||
				strings.Contains(err.Error(), "app-secret-77") {
				t.Errorf("the error repeats the value: %v", err)
			}
		})
	}
}

// TestValidateReadsNoFile: validation looks at the variables only; the
// files are read in the separate load step, and only once the settings
// are known good.
func TestValidateReadsNoFile(t *testing.T) {
	clearEnv(t)
	absent := filepath.Join(t.TempDir(), "absent")
	setenv(t, map[string]string{
		"NATS_USER": "worker", "NATS_PASSWORD_FILE": absent, "NATS_TOKEN_FILE": absent,
		"WX_APPS_FILE": absent, "WX_CA_FILE": absent,
	})
	var c WorkerConfig
	if err := envconfigProcess(&c); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatalf("validate must not read the files: %v", err)
	}
	err := c.loadFiles()
	for _, name := range []string{"NATS_PASSWORD_FILE", "NATS_TOKEN_FILE", "WX_APPS_FILE", "WX_CA_FILE"} {
		checkErr(t, err, name)
	}
	// And a bad setting stops Load before any file is read: the error
	// is about the setting alone.
	t.Setenv("WX_RATE", "-1")
	err = Load(&WorkerConfig{})
	checkErr(t, err, "WX_RATE")
	if strings.Contains(err.Error(), "WX_CA_FILE") {
		t.Errorf("files read although the settings were bad: %v", err)
	}
}

// TestWorkerMetricsAddrExplicit: the worker knows whether its probe
// address is the default, which it may move off when taken, or the
// operator's, which it may not.
func TestWorkerMetricsAddrExplicit(t *testing.T) {
	clearEnv(t)
	t.Setenv("WX_APPS", "wx1:"+secretA)
	var c WorkerConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if !c.MetricsAddrIsDefault() {
		t.Error("unset WORKER_METRICS_ADDR is not reported as the default")
	}
	t.Setenv("WORKER_METRICS_ADDR", ":9091")
	var set AllInOneConfig
	if err := Load(&set); err != nil {
		t.Fatal(err)
	}
	if set.MetricsAddrIsDefault() {
		t.Error("WORKER_METRICS_ADDR set to the default's value is still the operator's choice")
	}
}

func envconfigProcess(spec any) error { return envconfig.Process("", spec) }
