package config

// These tests set the environment with t.Setenv, so none of them is
// parallel.

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
)

const (
	secretA = "SECRET-a-7c1e5b09d2"
	secretB = "SECRET-b-3f88a6e411"
	natsPW  = "SECRET-natspw-41d0"
	natsTok = "SECRET-natstok-9b2"
)

// envNames lists the variables of spec's struct tags, embedded sections
// included.
func envNames(t reflect.Type, out map[string]bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if name := f.Tag.Get("envconfig"); name != "" {
			out[name] = true
		} else if f.Anonymous && f.Type.Kind() == reflect.Struct {
			envNames(f.Type, out)
		}
	}
}

// clearEnv unsets every variable of every config, and any FAKEWX_*, for
// the test's duration, so the host's environment cannot leak in.
func clearEnv(t *testing.T) {
	t.Helper()
	names := map[string]bool{}
	for _, spec := range []any{EdgeConfig{}, WorkerConfig{}, AllInOneConfig{}, FakeWXConfig{}} {
		envNames(reflect.TypeOf(spec), names)
	}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "FAKEWX_") {
			names[k] = true
		}
	}
	for name := range names {
		t.Setenv(name, "") // restores the old value at cleanup
		os.Unsetenv(name)
	}
}

func setenv(t *testing.T, kv map[string]string) {
	t.Helper()
	for k, v := range kv {
		t.Setenv(k, v)
	}
}

func TestEnvNamesMatchContract(t *testing.T) {
	names := map[string]bool{}
	for _, spec := range []any{EdgeConfig{}, WorkerConfig{}, AllInOneConfig{}, FakeWXConfig{}} {
		envNames(reflect.TypeOf(spec), names)
	}
	for _, want := range []string{
		"NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN",
		"NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY", "NATS_SUBJECT_PREFIX",
		"LOG_LEVEL", "LOG_FORMAT", "EDGE_ADDR", "EDGE_TIMEOUT", "EDGE_MAX_BODY",
		"WX_APPS", "WX_APPS_FILE", "WX_API_BASE", "WX_HTTP_TIMEOUT", "WX_MAX_ATTEMPTS",
		"WX_RATE", "WX_BURST", "WORKER_CONCURRENCY", "WORKER_METRICS_ADDR",
		"NATS_LISTEN", "NATS_STORE_DIR", "FAKEWX_ADDR",
		// Added by later issues: secrets from files, per-client limit,
		// exactly-once.
		"NATS_PASSWORD_FILE", "NATS_TOKEN_FILE", "EDGE_CLIENT_RATE", "EDGE_CLIENT_BURST", "EDGE_TRUST_PROXY",
		"WX_RESULT_TTL", "WX_CLAIM_TTL", "WORKER_KV_REPLICAS", "WORKER_REQUEST_TIMEOUT",
		// The fake over TLS, for HTTP/2 to the upstream, and the roots
		// that trust it (or an intercepting proxy).
		"FAKEWX_TLS", "FAKEWX_CA_OUT", "WX_CA_FILE",
		// Go's profiler, opt-in (issue 7).
		"DEBUG_ADDR",
		// Login tokens (issue 16).
		"WX_TOKEN_KEY_FILE", "WX_TOKEN_TTL", "WX_TOKEN_ISSUER",
		// Safe defaults (issue 14).
		"DEBUG_ALLOW_REMOTE", "EDGE_ALLOW_GET", "EDGE_MAX_CONNS", "EDGE_IDLE_TIMEOUT", "EDGE_METRICS_ADDR",
		"EDGE_TRUSTED_PROXIES", "FAKEWX_TLS_HOSTS",
	} {
		if !names[want] {
			t.Errorf("no config reads %s", want)
		}
	}
}

func TestEdgeDefaults(t *testing.T) {
	clearEnv(t)
	var c EdgeConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if c.URL != "nats://127.0.0.1:4222" || c.SubjectPrefix != "wxlogin" {
		t.Errorf("NATS defaults: %+v", c.NATS)
	}
	if c.Level != slog.LevelInfo || c.Format != "text" {
		t.Errorf("Log defaults: %+v", c.Log)
	}
	if c.Addr != ":8080" || c.Timeout != 5*time.Second || c.MaxBody != 4096 {
		t.Errorf("Edge defaults: %+v", c.Edge)
	}
}

func TestWorkerDefaults(t *testing.T) {
	clearEnv(t)
	t.Setenv("WX_APPS", "wx1:"+secretA)
	var c WorkerConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	w := c.Worker
	if len(w.Apps) != 1 || w.Apps["wx1"] != Secret(secretA) {
		t.Errorf("Apps = %v", w.Apps.IDs())
	}
	if w.APIBase != "https://api.weixin.qq.com" || w.HTTPTimeout != 2*time.Second || w.MaxAttempts != 3 ||
		w.Rate != 0 || w.Burst != 0 || w.Concurrency != 1024 || w.RequestTimeout != 5*time.Second ||
		w.MetricsAddr != ":9091" {
		t.Errorf("Worker defaults: %+v", w)
	}
	if c.URL != "nats://127.0.0.1:4222" || c.Format != "text" {
		t.Errorf("shared defaults: %+v", c)
	}
}

func TestAllInOneDefaults(t *testing.T) {
	clearEnv(t)
	var c AllInOneConfig
	if err := Load(&c); err != nil {
		t.Fatal(err) // apps are optional: the demo upstream stands in
	}
	if c.Listen != "127.0.0.1:4222" || c.StoreDir != "" || c.SubjectPrefix != "wxlogin" {
		t.Errorf("defaults: %+v", c)
	}
	if c.Edge.Addr != ":8080" || c.MaxAttempts != 3 || len(c.Apps) != 0 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestFakeWXDefaults(t *testing.T) {
	clearEnv(t)
	var c FakeWXConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9400" || c.Latency != 0 || len(c.Apps) != 0 || c.Format != "text" || c.TLS || c.CAOut != "" {
		t.Errorf("defaults: %+v", c)
	}

	t.Setenv("FAKEWX_APPS", "wxf:"+secretA)
	t.Setenv("FAKEWX_LATENCY", "-1ms")
	err := Load(&FakeWXConfig{})
	if err == nil || !strings.Contains(err.Error(), "FAKEWX_LATENCY") {
		t.Errorf("negative latency: %v", err)
	}
	t.Setenv("FAKEWX_APPS", "broken"+secretA)
	err = Load(&FakeWXConfig{})
	checkErr(t, err, "FAKEWX_APPS")
}

func TestFakeWXTLS(t *testing.T) {
	clearEnv(t)
	t.Setenv("FAKEWX_CA_OUT", filepath.Join(t.TempDir(), "ca.pem"))
	checkErr(t, Load(&FakeWXConfig{}), "FAKEWX_CA_OUT")
	t.Setenv("FAKEWX_TLS", "true")
	var c FakeWXConfig
	if err := Load(&c); err != nil || !c.TLS || c.CAOut == "" {
		t.Errorf("FAKEWX_TLS with FAKEWX_CA_OUT: %v, %+v", err, c)
	}
	t.Setenv("FAKEWX_TLS", "maybe")
	checkErr(t, Load(&FakeWXConfig{}), "FAKEWX_TLS")
}

func TestWXApps(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        map[string]Secret
	}{
		{"one", "wx1:" + secretA, map[string]Secret{"wx1": secretA}},
		{"two", "wx1:" + secretA + ",wx2:" + secretB, map[string]Secret{"wx1": secretA, "wx2": secretB}},
		{"whitespace", "  wx1 : " + secretA + " ,\twx2:" + secretB + "\n", map[string]Secret{"wx1": secretA, "wx2": secretB}},
		{"empty entries", ",wx1:" + secretA + ",,", map[string]Secret{"wx1": secretA}},
		{"duplicate, same secret", "wx1:" + secretA + ",wx1:" + secretA, map[string]Secret{"wx1": secretA}},
		{"colon in secret", "wx1:" + secretA + ":x", map[string]Secret{"wx1": secretA + ":x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("WX_APPS", tc.value)
			var c WorkerConfig
			if err := Load(&c); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(map[string]Secret(c.Apps), tc.want) {
				t.Errorf("Apps = %v, want %v", c.Apps.IDs(), tc.want)
			}
		})
	}
}

func TestWXAppsErrors(t *testing.T) {
	for _, tc := range []struct {
		name, value string
	}{
		{"different secrets", "wx1:" + secretA + ",wx1:" + secretB},
		{"no colon", secretA},
		{"no colon second entry", "wx1:" + secretA + "," + secretB},
		{"empty appid", ":" + secretA},
		{"empty secret", "wx1:"},
		{"appid with space", "wx 1:" + secretA},
		{"appid non-ASCII", "wxé:" + secretA},
		{"secret as appid", secretA + ":"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("WX_APPS", tc.value)
			err := Load(&WorkerConfig{})
			checkErr(t, err, "WX_APPS")
		})
	}
}

// checkErr checks err names the variable and holds no secret.
func checkErr(t *testing.T, err error, name string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one naming %s", name)
	}
	msg := err.Error()
	if !strings.Contains(msg, name) {
		t.Errorf("error %q does not name %s", msg, name)
	}
	for _, s := range []string{secretA, secretB, natsPW, natsTok, "SECRET-"} {
		if strings.Contains(msg, s) {
			t.Errorf("error %q holds a secret", msg)
		}
	}
}

func TestWXAppsFile(t *testing.T) {
	clearEnv(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "apps")
	content := "# mounted secrets\n\nwx2:" + secretB + "\n   \n  # indented comment\n\twx3 : " + secretA + "  \r\nwx1:" + secretA + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WX_APPS", "wx1:"+secretA)
	t.Setenv("WX_APPS_FILE", path)
	var c WorkerConfig
	if err := Load(&c); err != nil {
		t.Fatal(err)
	}
	want := map[string]Secret{"wx1": secretA, "wx2": secretB, "wx3": secretA}
	if !reflect.DeepEqual(map[string]Secret(c.Apps), want) {
		t.Errorf("Apps = %v", c.Apps.IDs())
	}

	// The file alone is enough.
	t.Setenv("WX_APPS", "")
	os.Unsetenv("WX_APPS")
	c = WorkerConfig{}
	if err := Load(&c); err != nil || len(c.Apps) != 3 {
		t.Errorf("file only: %v, %v", err, c.Apps.IDs())
	}

	// A clash between WX_APPS and the file.
	t.Setenv("WX_APPS", "wx2:"+secretA)
	checkErr(t, Load(&WorkerConfig{}), "WX_APPS_FILE")

	// A malformed line names the file's variable and line, not the secret.
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("# c\nwx1:"+secretA+"\n"+secretB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WX_APPS", "")
	t.Setenv("WX_APPS_FILE", bad)
	err := Load(&WorkerConfig{})
	checkErr(t, err, "WX_APPS_FILE")
	if err != nil && !strings.Contains(err.Error(), "line 3") {
		t.Errorf("error %q does not name line 3", err)
	}

	// A missing file.
	t.Setenv("WX_APPS_FILE", filepath.Join(dir, "missing"))
	checkErr(t, Load(&WorkerConfig{}), "WX_APPS_FILE")
}

func TestWorkerNeedsApps(t *testing.T) {
	clearEnv(t)
	checkErr(t, Load(&WorkerConfig{}), "WX_APPS")
	t.Setenv("WX_APPS", " , ")
	checkErr(t, Load(&WorkerConfig{}), "WX_APPS")
}

func TestInvalidSettings(t *testing.T) {
	edge := func() any { return &EdgeConfig{} }
	worker := func() any { return &WorkerConfig{} }
	allInOne := func() any { return &AllInOneConfig{} }
	for _, tc := range []struct {
		name  string
		spec  func() any
		env   map[string]string
		names []string // each must appear in the error
	}{
		{"EDGE_TIMEOUT negative", edge, map[string]string{"EDGE_TIMEOUT": "-1s"}, []string{"EDGE_TIMEOUT"}},
		{"EDGE_TIMEOUT zero", edge, map[string]string{"EDGE_TIMEOUT": "0"}, []string{"EDGE_TIMEOUT"}},
		{"EDGE_TIMEOUT garbage", edge, map[string]string{"EDGE_TIMEOUT": "abc"}, []string{"EDGE_TIMEOUT"}},
		{"EDGE_MAX_BODY small", edge, map[string]string{"EDGE_MAX_BODY": "10"}, []string{"EDGE_MAX_BODY"}},
		{"EDGE_MAX_BODY garbage", edge, map[string]string{"EDGE_MAX_BODY": "4k"}, []string{"EDGE_MAX_BODY"}},
		{"EDGE_ADDR", edge, map[string]string{"EDGE_ADDR": "nope"}, []string{"EDGE_ADDR"}},
		{"LOG_FORMAT", edge, map[string]string{"LOG_FORMAT": "xml"}, []string{"LOG_FORMAT"}},
		{"LOG_LEVEL", edge, map[string]string{"LOG_LEVEL": "loud"}, []string{"LOG_LEVEL"}},
		{"NATS_URL", edge, map[string]string{"NATS_URL": "::bad"}, []string{"NATS_URL"}},
		{"NATS_URL second", edge, map[string]string{"NATS_URL": "nats://a:4222,::bad"}, []string{"NATS_URL"}},
		{"NATS_TLS_CERT without key", edge, map[string]string{"NATS_TLS_CERT": "/c.pem"}, []string{"NATS_TLS_CERT"}},
		{"NATS_TLS_KEY without cert", edge, map[string]string{"NATS_TLS_KEY": "/k.pem"}, []string{"NATS_TLS_KEY"}},
		{"NATS_PASSWORD without user", edge, map[string]string{"NATS_PASSWORD": natsPW}, []string{"NATS_PASSWORD"}},
		{"NATS_SUBJECT_PREFIX space", edge, map[string]string{"NATS_SUBJECT_PREFIX": "a b"}, []string{"NATS_SUBJECT_PREFIX"}},
		{"NATS_SUBJECT_PREFIX wildcard", edge, map[string]string{"NATS_SUBJECT_PREFIX": "a.*"}, []string{"NATS_SUBJECT_PREFIX"}},
		{"NATS_SUBJECT_PREFIX tail", edge, map[string]string{"NATS_SUBJECT_PREFIX": "a.>"}, []string{"NATS_SUBJECT_PREFIX"}},
		{"NATS_SUBJECT_PREFIX empty token", edge, map[string]string{"NATS_SUBJECT_PREFIX": "a..b"}, []string{"NATS_SUBJECT_PREFIX"}},
		{"NATS_SUBJECT_PREFIX empty", edge, map[string]string{"NATS_SUBJECT_PREFIX": ""}, []string{"NATS_SUBJECT_PREFIX"}},
		{"several at once", edge, map[string]string{"EDGE_ADDR": "nope", "LOG_FORMAT": "xml", "EDGE_TIMEOUT": "-1s"},
			[]string{"EDGE_ADDR", "LOG_FORMAT", "EDGE_TIMEOUT"}},

		{"WX_RATE negative", worker, map[string]string{"WX_RATE": "-1"}, []string{"WX_RATE"}},
		{"WX_RATE garbage", worker, map[string]string{"WX_RATE": "fast"}, []string{"WX_RATE"}},
		{"WX_BURST negative", worker, map[string]string{"WX_BURST": "-1"}, []string{"WX_BURST"}},
		{"WX_MAX_ATTEMPTS zero", worker, map[string]string{"WX_MAX_ATTEMPTS": "0"}, []string{"WX_MAX_ATTEMPTS"}},
		{"WX_MAX_ATTEMPTS large", worker, map[string]string{"WX_MAX_ATTEMPTS": "11"}, []string{"WX_MAX_ATTEMPTS"}},
		{"WORKER_CONCURRENCY zero", worker, map[string]string{"WORKER_CONCURRENCY": "0"}, []string{"WORKER_CONCURRENCY"}},
		{"WORKER_METRICS_ADDR", worker, map[string]string{"WORKER_METRICS_ADDR": "nope"}, []string{"WORKER_METRICS_ADDR"}},
		{"WORKER_REQUEST_TIMEOUT", worker, map[string]string{"WORKER_REQUEST_TIMEOUT": "0s"}, []string{"WORKER_REQUEST_TIMEOUT"}},
		{"WX_HTTP_TIMEOUT", worker, map[string]string{"WX_HTTP_TIMEOUT": "-2s"}, []string{"WX_HTTP_TIMEOUT"}},
		{"WX_API_BASE ftp", worker, map[string]string{"WX_API_BASE": "ftp://x"}, []string{"WX_API_BASE"}},
		{"WX_API_BASE no host", worker, map[string]string{"WX_API_BASE": "https://"}, []string{"WX_API_BASE"}},
		{"NATS_PASSWORD without user, worker", worker, map[string]string{"NATS_PASSWORD": natsPW, "NATS_TOKEN": natsTok}, []string{"NATS_PASSWORD"}},

		{"DEBUG_ADDR edge", edge, map[string]string{"DEBUG_ADDR": "6060"}, []string{"DEBUG_ADDR"}},
		{"DEBUG_ADDR worker", worker, map[string]string{"DEBUG_ADDR": "localhost"}, []string{"DEBUG_ADDR"}},
		{"DEBUG_ADDR all-in-one", allInOne, map[string]string{"DEBUG_ADDR": "::1"}, []string{"DEBUG_ADDR"}},
		{"NATS_LISTEN", allInOne, map[string]string{"NATS_LISTEN": "nope"}, []string{"NATS_LISTEN"}},
		{"NATS_SUBJECT_PREFIX all-in-one", allInOne, map[string]string{"NATS_SUBJECT_PREFIX": "a b"}, []string{"NATS_SUBJECT_PREFIX"}},
		{"EDGE_TIMEOUT all-in-one", allInOne, map[string]string{"EDGE_TIMEOUT": "-1s"}, []string{"EDGE_TIMEOUT"}},
		{"WX_RATE all-in-one", allInOne, map[string]string{"WX_RATE": "-1"}, []string{"WX_RATE"}},
		{"WX_APPS all-in-one", allInOne, map[string]string{"WX_APPS": "x" + secretA}, []string{"WX_APPS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("WX_APPS", "wx1:"+secretA)
			setenv(t, tc.env)
			err := Load(tc.spec())
			for _, name := range tc.names {
				checkErr(t, err, name)
			}
		})
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	clearEnv(t)
	setenv(t, map[string]string{
		"WX_APPS":       "wx1:" + secretA + ",wx2:" + secretB,
		"NATS_USER":     "bob",
		"NATS_PASSWORD": natsPW,
		"NATS_TOKEN":    natsTok,
	})
	var w WorkerConfig
	if err := Load(&w); err != nil {
		t.Fatal(err)
	}
	if w.Password != Secret(natsPW) || w.Token != Secret(natsTok) || w.Apps["wx2"] != Secret(secretB) {
		t.Fatal("secrets not loaded")
	}
	var a AllInOneConfig
	if err := Load(&a); err != nil {
		t.Fatal(err)
	}
	var e EdgeConfig
	if err := Load(&e); err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{w, &w, a, &a, e, &e, w.NATS, w.Worker, a.Worker} {
		name := fmt.Sprintf("%T", v)
		var outs []string
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
			outs = append(outs, fmt.Sprintf(verb, v))
		}
		for _, format := range []string{"json", "text"} {
			var buf bytes.Buffer
			var h slog.Handler = slog.NewJSONHandler(&buf, nil)
			if format == "text" {
				h = slog.NewTextHandler(&buf, nil)
			}
			slog.New(h).Info("config", "cfg", v, "apps", w.Apps, "pw", w.Password, slog.Group("g", "tok", w.Token))
			outs = append(outs, buf.String())
		}
		for _, out := range outs {
			for _, s := range []string{secretA, secretB, natsPW, natsTok} {
				if strings.Contains(out, s) {
					t.Errorf("%s: output holds a secret: %s", name, out)
				}
			}
		}
	}
	// The appids remain visible, so logs still say which apps are served.
	if got := fmt.Sprint(w.Apps); got != "wx1,wx2" {
		t.Errorf("Apps prints %q", got)
	}
	if got := fmt.Sprint(w.Password); got != "[redacted]" {
		t.Errorf("Secret prints %q", got)
	}
	if got := fmt.Sprint(Secret("")); got != "" {
		t.Errorf("empty Secret prints %q", got)
	}
}

func TestUsage(t *testing.T) {
	for _, spec := range []any{&WorkerConfig{}, &AllInOneConfig{}} {
		var buf bytes.Buffer
		if err := Usage(&buf, spec); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		for _, want := range []string{"KEY", "WX_APPS", "WX_APPS_FILE", "LOG_LEVEL", "appid:secret"} {
			if !strings.Contains(out, want) {
				t.Errorf("%T usage lacks %q:\n%s", spec, want, out)
			}
		}
	}
	var buf bytes.Buffer
	if err := Usage(&buf, &EdgeConfig{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "EDGE_MAX_BODY") || !strings.Contains(buf.String(), "4096") {
		t.Errorf("edge usage:\n%s", buf.String())
	}
}

func TestWantsHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"x", "--help"}, {"-help"}, {"help"}} {
		if !WantsHelp(args) {
			t.Errorf("WantsHelp(%q) = false", args)
		}
	}
	for _, args := range [][]string{nil, {"-v"}, {"helpme"}} {
		if WantsHelp(args) {
			t.Errorf("WantsHelp(%q) = true", args)
		}
	}
}

func TestWXCAFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, parts ...[]byte) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, bytes.Join(parts, nil), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	a, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	b, err := fakewx.NewTLSCert()
	if err != nil {
		t.Fatal(err)
	}
	pemBlock := func(typ string, body []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: body}) }
	// Distinctive content that no error may quote.
	const marker = "SECRET-cafile-2b7e1c"

	t.Run("bundle", func(t *testing.T) {
		clearEnv(t)
		t.Setenv("WX_APPS", "wx1:"+secretA)
		// Comments between blocks, as in the system's bundles.
		t.Setenv("WX_CA_FILE", write("bundle.pem", []byte("# first\n"), a.PEM(), []byte("\n# second\n"), b.PEM()))
		for _, spec := range []interface{ roots() *x509.CertPool }{&WorkerConfig{}, &AllInOneConfig{}} {
			if err := Load(spec); err != nil {
				t.Fatalf("%T: %v", spec, err)
			}
			pool := spec.roots()
			if pool == nil {
				t.Fatalf("%T: no roots", spec)
			}
			for _, c := range []*fakewx.TLSCert{a, b} {
				leaf := c.ServerConfig().Certificates[0].Leaf
				if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "localhost", Roots: pool}); err != nil {
					t.Errorf("%T: a certificate of the bundle is not trusted: %v", spec, err)
				}
			}
		}
	})

	t.Run("unset", func(t *testing.T) {
		clearEnv(t)
		t.Setenv("WX_APPS", "wx1:"+secretA)
		var c WorkerConfig
		if err := Load(&c); err != nil || c.RootCAs() != nil {
			t.Errorf("without WX_CA_FILE: %v, roots %v; want the system's (nil)", err, c.RootCAs())
		}
	})

	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing.pem"), "no such file"},
		{"directory", dir, "WX_CA_FILE"},
		{"empty", write("empty.pem"), "holds no PEM certificate"},
		{"not PEM", write("garbage.pem", []byte(marker+"\nnot a certificate\n")), "holds no PEM certificate"},
		{"private key", write("key.pem", a.PEM(), pemBlock("EC PRIVATE KEY", []byte(marker))), "block 2 is a private key"},
		{"other block", write("csr.pem", pemBlock("CERTIFICATE REQUEST", []byte(marker))), "block 1 is not a CERTIFICATE"},
		{"bad certificate", write("bad.pem", a.PEM(), pemBlock("CERTIFICATE", []byte(marker))), "certificate 2 does not parse"},
		{"cut short", write("cut.pem", a.PEM(), b.PEM()[:len(b.PEM())/2], []byte(marker)), "block 2 is malformed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearEnv(t)
			t.Setenv("WX_APPS", "wx1:"+secretA)
			t.Setenv("WX_CA_FILE", tc.path)
			for _, spec := range []any{&WorkerConfig{}, &AllInOneConfig{}} {
				err := Load(spec)
				checkErr(t, err, "WX_CA_FILE")
				if err != nil && !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%T: error %q does not say %q", spec, err, tc.want)
				}
			}
		})
	}
}

// roots lets TestWXCAFile read either config's WX_CA_FILE pool.
func (c *WorkerConfig) roots() *x509.CertPool   { return c.RootCAs() }
func (c *AllInOneConfig) roots() *x509.CertPool { return c.RootCAs() }
