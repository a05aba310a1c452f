// Package config holds the environment contract of every binary: one
// envconfig struct per binary, built from shared sections, loaded and
// validated once at start. No other package reads the environment.
package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/wxlogin/wxlogin/internal/seal"
)

// NATS is how edge and worker reach NATS.
type NATS struct {
	URL           string `envconfig:"NATS_URL" default:"nats://127.0.0.1:4222" desc:"NATS server URL(s), comma separated"`
	Creds         string `envconfig:"NATS_CREDS" desc:"path of a NATS credentials (.creds) file"`
	NKey          string `envconfig:"NATS_NKEY" desc:"path of an nkey seed file"`
	User          string `envconfig:"NATS_USER" desc:"NATS user name"`
	Password      Secret `envconfig:"NATS_PASSWORD" desc:"NATS password"`
	PasswordFile  string `envconfig:"NATS_PASSWORD_FILE" desc:"path of a file holding the NATS password (mounted secrets); read at every connect"`
	Token         Secret `envconfig:"NATS_TOKEN" desc:"NATS token"`
	TokenFile     string `envconfig:"NATS_TOKEN_FILE" desc:"path of a file holding the NATS token (mounted secrets); read at every connect"`
	TLSCA         string `envconfig:"NATS_TLS_CA" desc:"path of a CA bundle to verify the NATS server"`
	TLSCert       string `envconfig:"NATS_TLS_CERT" desc:"path of a client certificate for NATS (with NATS_TLS_KEY)"`
	TLSKey        string `envconfig:"NATS_TLS_KEY" desc:"path of the client certificate's key"`
	SubjectPrefix string `envconfig:"NATS_SUBJECT_PREFIX" default:"wxlogin" desc:"prefix of the exchange subject PREFIX.code2session"`
}

// Log says how to log.
type Log struct {
	Level  slog.Level `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	Format string     `envconfig:"LOG_FORMAT" default:"text" desc:"text (human readable) or json"`
}

// Debug turns on Go's profiler, for an operator who needs to see where a
// process spends its CPU or memory.
type Debug struct {
	DebugAddr string `envconfig:"DEBUG_ADDR" desc:"address of Go's profiler, /debug/pprof/ (e.g. 127.0.0.1:6060); empty (the default) disables; a loopback address unless DEBUG_ALLOW_REMOTE"`
	// Profiles show how the program works and cost CPU on demand: an
	// address anyone on the network can reach is a choice to be made
	// twice.
	AllowRemote bool `envconfig:"DEBUG_ALLOW_REMOTE" default:"false" desc:"allow DEBUG_ADDR on a non-loopback address (\":6060\" listens on every interface)"`
}

// Edge configures the HTTP front.
type Edge struct {
	Addr    string        `envconfig:"EDGE_ADDR" default:":8080" desc:"HTTP listen address"`
	Timeout time.Duration `envconfig:"EDGE_TIMEOUT" default:"5s" desc:"budget of one request, end to end"`
	MaxBody int64         `envconfig:"EDGE_MAX_BODY" default:"4096" desc:"largest request body in bytes"`
	// The per-client limit is off by default: behind a proxy that does not
	// set X-Forwarded-For, every user would share the proxy's bucket.
	ClientRate  float64 `envconfig:"EDGE_CLIENT_RATE" default:"0" desc:"requests per second per client IP on /v1/openid; 0 = off"`
	ClientBurst int     `envconfig:"EDGE_CLIENT_BURST" default:"0" desc:"requests a client IP may send at once above EDGE_CLIENT_RATE; 0 = one second's worth"`
	TrustProxy  bool    `envconfig:"EDGE_TRUST_PROXY" default:"false" desc:"take the client IP from X-Forwarded-For: the right-most hop that is not in EDGE_TRUSTED_PROXIES"`
	// The private ranges are where a cluster's ingress and load balancers
	// live; a client cannot connect from them through the public
	// internet, so their hops are skipped as proxies.
	TrustedProxies Prefixes `envconfig:"EDGE_TRUSTED_PROXIES" default:"127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7" desc:"CIDRs of the proxies whose X-Forwarded-For hops are skipped (with EDGE_TRUST_PROXY)"`
	// GET puts the code in the URL, where access logs keep it for as long
	// as WX_RESULT_TTL lets it be replayed; the seed clients use GET, so
	// the default stays.
	AllowGet bool `envconfig:"EDGE_ALLOW_GET" default:"true" desc:"accept codes in GET query strings; false: only POST bodies (405 for GET)"`
	// Each idle connection costs memory (about 19 KB); the cap keeps a
	// flood of them from growing the process past its container limit.
	MaxConns    int           `envconfig:"EDGE_MAX_CONNS" default:"4096" desc:"most open client connections; more wait in the listen queue"`
	IdleTimeout time.Duration `envconfig:"EDGE_IDLE_TIMEOUT" default:"30s" desc:"how long a keep-alive connection may stay unused"`
	MetricsAddr string        `envconfig:"EDGE_METRICS_ADDR" desc:"address of /metrics apart from EDGE_ADDR; empty: /metrics on EDGE_ADDR"`
}

// Worker configures the exchange worker.
type Worker struct {
	Apps           Apps          `envconfig:"WX_APPS" desc:"appid:secret[,appid:secret...]"`
	AppsFile       string        `envconfig:"WX_APPS_FILE" desc:"file of appid:secret pairs, one per line (mounted secrets)"`
	APIBase        string        `envconfig:"WX_API_BASE" default:"https://api.weixin.qq.com" desc:"WeChat API base URL"`
	HTTPTimeout    time.Duration `envconfig:"WX_HTTP_TIMEOUT" default:"2s" desc:"timeout of one upstream attempt"`
	MaxAttempts    int           `envconfig:"WX_MAX_ATTEMPTS" default:"3" desc:"upstream attempts per exchange, first included"`
	Rate           float64       `envconfig:"WX_RATE" default:"0" desc:"upstream calls per second per appid for the whole worker pool; 0 = unlimited"`
	Burst          int           `envconfig:"WX_BURST" default:"0" desc:"how far the pool may exceed WX_RATE in any second; 0 = one second's worth"`
	Concurrency    int           `envconfig:"WORKER_CONCURRENCY" default:"1024" desc:"exchanges in flight per worker"`
	RequestTimeout time.Duration `envconfig:"WORKER_REQUEST_TIMEOUT" default:"5s" desc:"budget of a NATS request that carries no Wxlogin-Timeout-Ms header"`
	MetricsAddr    string        `envconfig:"WORKER_METRICS_ADDR" default:":9091" desc:"address of /healthz and /readyz; empty disables"`
	ResultTTL      time.Duration `envconfig:"WX_RESULT_TTL" default:"5m" desc:"how long an exchange's answer is kept for retries and duplicates (min 10s); a leaked code can be replayed for the same openid this long"`
	ClaimTTL       time.Duration `envconfig:"WX_CLAIM_TTL" default:"3s" desc:"how long a worker's claim on a code outlives the worker (min 1s)"`
	KVReplicas     int           `envconfig:"WORKER_KV_REPLICAS" default:"1" desc:"replicas of the JetStream answers bucket (3 on a 3-node cluster)"`
	KVMaxBytes     int64         `envconfig:"WORKER_KV_MAX_BYTES" default:"67108864" desc:"byte limit of the JetStream answers bucket (64 MiB holds about 380,000 answers, 5 minutes of 1,200 logins/s); JetStream reserves it from the account's memory store; when full, logins are still answered but not de-duplicated across workers"`
	RateKVMaxBytes int64         `envconfig:"WORKER_RATE_KV_MAX_BYTES" default:"8388608" desc:"byte limit of the JetStream rate-limit bucket (8 MiB), apart from the answers so that they cannot starve it"`
	StoreKey       Secret        `envconfig:"WX_STORE_KEY" desc:"secret (at least 32 bytes) the workers derive the keys of their stored values from; empty: each app's AppSecret; the same on every worker"`
	StoreKeyFile   string        `envconfig:"WX_STORE_KEY_FILE" desc:"file holding WX_STORE_KEY (mounted secrets)"`
	CAFile         string        `envconfig:"WX_CA_FILE" desc:"PEM bundle of the CA certificates to trust for WX_API_BASE instead of the system's (intercepting egress proxy, private gateway); empty: the system's"`

	// roots holds WX_CA_FILE's certificates, read once by loadFiles.
	roots *x509.CertPool
	// metricsAddrSet: WORKER_METRICS_ADDR was set, not defaulted.
	metricsAddrSet bool
	// storeKey is WX_STORE_KEY or WX_STORE_KEY_FILE's content, set when
	// the files are loaded.
	storeKey []byte
}

// MetricsAddrIsDefault reports whether WORKER_METRICS_ADDR was left unset:
// then, several workers on one host sharing the default port, a worker
// that finds it taken may listen on another.
func (w *Worker) MetricsAddrIsDefault() bool { return !w.metricsAddrSet }

// StoreKeySecret returns WX_STORE_KEY, or the content of
// WX_STORE_KEY_FILE, as read when the configuration was loaded; nil when
// neither is set (then each app's keys come from its AppSecret).
func (w *Worker) StoreKeySecret() []byte { return w.storeKey }

// RootCAs returns the certificates of WX_CA_FILE, read when the
// configuration was loaded, or nil when it is empty: then the system's
// roots apply (wechat.RootCAs treats nil so).
func (w *Worker) RootCAs() *x509.CertPool { return w.roots }

// EdgeConfig is cmd/edge's configuration.
type EdgeConfig struct {
	NATS
	Log
	Edge
	Debug
}

// WorkerConfig is cmd/worker's configuration.
type WorkerConfig struct {
	NATS
	Log
	Worker
	Tokens
	Debug
}

// Embedded configures the NATS server the all-in-one binary runs itself.
type Embedded struct {
	Listen   string `envconfig:"NATS_LISTEN" default:"127.0.0.1:4222" desc:"where the embedded NATS server listens"`
	StoreDir string `envconfig:"NATS_STORE_DIR" desc:"JetStream store directory; default: a directory under the OS temp dir"`
	// Without credentials a client may only ask for openids; these users
	// are trusted services that may also call the subjects that act for
	// any openid (PREFIX.decrypt, PREFIX.phone).
	UsersFile string `envconfig:"NATS_USERS_FILE" desc:"file of user:password lines (a password or a bcrypt hash) of NATS users that are trusted services; without it, clients of NATS_LISTEN are anonymous requesters only"`

	// users holds NATS_USERS_FILE's users, read once by loadFiles.
	users map[string]Secret
}

// Users returns the users of NATS_USERS_FILE, read when the configuration
// was loaded: name to password or bcrypt hash.
func (e *Embedded) Users() map[string]Secret { return e.users }

// AllInOneConfig is cmd/wxlogin's configuration: the edge's and the
// worker's sections, plus the embedded server in place of NATS_URL and
// credentials (edge and worker connect to it in-process).
type AllInOneConfig struct {
	Log
	Embedded
	Edge
	Worker
	Tokens
	Debug
	SubjectPrefix string `envconfig:"NATS_SUBJECT_PREFIX" default:"wxlogin" desc:"prefix of the exchange subject PREFIX.code2session"`
}

// FakeWXConfig is cmd/fakewx's configuration.
type FakeWXConfig struct {
	Log
	Addr    string        `envconfig:"FAKEWX_ADDR" default:"127.0.0.1:9400" desc:"listen address of the fake WeChat"`
	Apps    Apps          `envconfig:"FAKEWX_APPS" desc:"appid:secret pairs the fake accepts; empty: the demo app"`
	Latency time.Duration `envconfig:"FAKEWX_LATENCY" default:"0s" desc:"added to every answer"`
	// Over TLS the fake offers HTTP/2, as an HTTPS server may; over plain
	// HTTP a client holds a connection per call in flight.
	TLS   bool   `envconfig:"FAKEWX_TLS" default:"false" desc:"serve HTTPS (HTTP/2 and HTTP/1.1) with a self-signed certificate made at start"`
	CAOut string `envconfig:"FAKEWX_CA_OUT" desc:"with FAKEWX_TLS, write the certificate (PEM) to this path, for a worker's WX_CA_FILE"`
	// Workers refuse plain http:// to anything but loopback, so a fake in
	// another container is reached over HTTPS by its service name.
	TLSHosts []string `envconfig:"FAKEWX_TLS_HOSTS" desc:"with FAKEWX_TLS, host names the certificate is valid for besides localhost (comma separated), e.g. a Compose service name"`
}

// Load fills spec from the environment, validates it, then reads the
// files it names (loadFiles), in that order: validation looks at the
// variables only, and a file is read once every setting is known good.
// Errors name the variable at fault, never a secret's value.
func Load(spec any) error {
	if err := envconfig.Process("", spec); err != nil {
		var pe *envconfig.ParseError
		if errors.As(err, &pe) {
			// envconfig's own text repeats the raw value, which for
			// WX_APPS would be a secret; Apps' decoder never does.
			return fmt.Errorf("%s: cannot parse as %s: %v", pe.KeyName, pe.TypeName, pe.Err)
		}
		return err
	}
	if w, ok := spec.(interface{ worker() *Worker }); ok {
		_, w.worker().metricsAddrSet = os.LookupEnv("WORKER_METRICS_ADDR")
	}
	if v, ok := spec.(interface{ validate() error }); ok {
		if err := v.validate(); err != nil {
			return err
		}
	}
	if v, ok := spec.(interface{ loadFiles() error }); ok {
		return v.loadFiles()
	}
	return nil
}

func (c *WorkerConfig) worker() *Worker   { return &c.Worker }
func (c *AllInOneConfig) worker() *Worker { return &c.Worker }

func (c *EdgeConfig) loadFiles() error { return c.NATS.loadFiles() }

func (c *WorkerConfig) loadFiles() error {
	return errors.Join(c.NATS.loadFiles(), c.Worker.loadFiles(true))
}

func (c *AllInOneConfig) loadFiles() error {
	var err error
	if c.UsersFile != "" {
		c.users, err = readUsers(c.UsersFile)
	}
	return errors.Join(err, c.Worker.loadFiles(false))
}

// Usage writes the variables of spec as a table, for -h.
func Usage(w io.Writer, spec any) error {
	tw := tabwriter.NewWriter(w, 1, 0, 4, ' ', 0)
	if err := envconfig.Usagef("", spec, tw, envconfig.DefaultTableFormat); err != nil {
		return err
	}
	return tw.Flush()
}

func (c *EdgeConfig) validate() error {
	return errors.Join(c.NATS.validate(), c.Log.validate(), c.Edge.validate(), c.Debug.validate())
}

func (c *WorkerConfig) validate() error {
	return errors.Join(c.NATS.validate(), c.Log.validate(), c.Worker.validate(), c.Tokens.validate(), c.Debug.validate())
}

func (c *AllInOneConfig) validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("NATS_LISTEN: want host:port, got %q", c.Listen))
	}
	if !validPrefix(c.SubjectPrefix) {
		errs = append(errs, errors.New("NATS_SUBJECT_PREFIX: want NATS subject tokens without spaces or wildcards"))
	}
	// With no apps the all-in-one runs its demo upstream; so apps are optional here.
	return errors.Join(append(errs, c.Log.validate(), c.Edge.validate(), c.Worker.validate(), c.Tokens.validate(), c.Debug.validate())...)
}

func (c *FakeWXConfig) validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("FAKEWX_ADDR: want host:port, got %q", c.Addr))
	}
	if c.Latency < 0 {
		errs = append(errs, errors.New("FAKEWX_LATENCY: must not be negative"))
	}
	if c.CAOut != "" && !c.TLS {
		errs = append(errs, errors.New("FAKEWX_CA_OUT: set FAKEWX_TLS=true too"))
	}
	if len(c.TLSHosts) > 0 && !c.TLS {
		errs = append(errs, errors.New("FAKEWX_TLS_HOSTS: set FAKEWX_TLS=true too"))
	}
	return errors.Join(append(errs, c.Log.validate())...)
}

func (n *NATS) validate() error {
	var errs []error
	for _, u := range strings.Split(n.URL, ",") {
		pu, err := url.Parse(strings.TrimSpace(u))
		if err != nil || pu.Host == "" {
			errs = append(errs, errors.New("NATS_URL: want nats://host:port[,nats://...]"))
			break
		}
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		errs = append(errs, errors.New("NATS_TLS_CERT and NATS_TLS_KEY: set both or neither"))
	}
	if n.Password != "" && n.User == "" {
		errs = append(errs, errors.New("NATS_PASSWORD: set NATS_USER too"))
	}
	if n.PasswordFile != "" && n.User == "" {
		errs = append(errs, errors.New("NATS_PASSWORD_FILE: set NATS_USER too"))
	}
	if n.Password != "" && n.PasswordFile != "" {
		errs = append(errs, errors.New("NATS_PASSWORD and NATS_PASSWORD_FILE: set one, not both"))
	}
	if n.Token != "" && n.TokenFile != "" {
		errs = append(errs, errors.New("NATS_TOKEN and NATS_TOKEN_FILE: set one, not both"))
	}
	errs = append(errs, placeholder("NATS_PASSWORD", string(n.Password)), placeholder("NATS_TOKEN", string(n.Token)))
	for _, u := range strings.Split(n.URL, ",") {
		if pu, err := url.Parse(strings.TrimSpace(u)); err == nil && pu.User != nil {
			pw, _ := pu.User.Password()
			errs = append(errs, placeholder("NATS_URL", pw))
		}
	}
	if !validPrefix(n.SubjectPrefix) {
		errs = append(errs, errors.New("NATS_SUBJECT_PREFIX: want NATS subject tokens without spaces or wildcards"))
	}
	return errors.Join(errs...)
}

// loadFiles reads the password and token files once, so that a wrong
// mount or a placeholder stops the program at start with the variable's
// name; natsconn reads them again at every (re)connect, so that a rotated
// Kubernetes secret takes effect without a restart.
func (n *NATS) loadFiles() error {
	var errs []error
	for _, f := range []struct{ name, path string }{{"NATS_PASSWORD_FILE", n.PasswordFile}, {"NATS_TOKEN_FILE", n.TokenFile}} {
		if f.path == "" {
			continue
		}
		b, err := os.ReadFile(f.path)
		v := strings.TrimSpace(string(b))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", f.name, err))
		case v == "":
			errs = append(errs, fmt.Errorf("%s: %s is empty", f.name, f.path))
		default:
			errs = append(errs, placeholder(f.name, v))
		}
	}
	return errors.Join(errs...)
}

func (l *Log) validate() error {
	if l.Format != "text" && l.Format != "json" {
		return fmt.Errorf("LOG_FORMAT: want text or json, got %q", l.Format)
	}
	return nil
}

func (d *Debug) validate() error {
	if d.DebugAddr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(d.DebugAddr)
	if err != nil {
		return fmt.Errorf("DEBUG_ADDR: want [host]:port or empty, got %q", d.DebugAddr)
	}
	if !d.AllowRemote && !IsLoopback(host) {
		return fmt.Errorf("DEBUG_ADDR: %s is not a loopback address (127.0.0.1:port, [::1]:port or localhost:port); set DEBUG_ALLOW_REMOTE=true to serve the profiler there anyway", d.DebugAddr)
	}
	return nil
}

// IsLoopback reports whether host (a name or an IP, without port) can
// only be reached from this machine: localhost, 127.0.0.0/8 or ::1. An
// empty host means every interface, so it is not.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

func (e *Edge) validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(e.Addr); err != nil {
		errs = append(errs, fmt.Errorf("EDGE_ADDR: want [host]:port, got %q", e.Addr))
	}
	if e.Timeout <= 0 {
		errs = append(errs, errors.New("EDGE_TIMEOUT: must be positive"))
	}
	if e.MaxBody < 64 {
		errs = append(errs, errors.New("EDGE_MAX_BODY: must be at least 64 bytes"))
	}
	// Written so that NaN fails too; +Inf would mean no limit at all,
	// which is what 0 already says.
	if !(e.ClientRate >= 0) || math.IsInf(e.ClientRate, 0) {
		errs = append(errs, errors.New("EDGE_CLIENT_RATE: must be a finite number, 0 or more"))
	}
	if e.ClientBurst < 0 {
		errs = append(errs, errors.New("EDGE_CLIENT_BURST: must not be negative"))
	}
	if e.MaxConns < 1 {
		errs = append(errs, errors.New("EDGE_MAX_CONNS: must be at least 1"))
	}
	if e.IdleTimeout <= 0 {
		errs = append(errs, errors.New("EDGE_IDLE_TIMEOUT: must be positive"))
	}
	if e.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(e.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("EDGE_METRICS_ADDR: want [host]:port or empty, got %q", e.MetricsAddr))
		} else if e.MetricsAddr == e.Addr {
			errs = append(errs, errors.New("EDGE_METRICS_ADDR: must differ from EDGE_ADDR (leave it empty to serve /metrics there)"))
		}
	}
	return errors.Join(errs...)
}

func (w *Worker) validate() error {
	errs := []error{w.Apps.placeholders("WX_APPS")}
	if u, err := url.Parse(w.APIBase); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("WX_API_BASE: want an http(s) URL, got %q", w.APIBase))
	} else if u.Scheme == "http" && !IsLoopback(u.Hostname()) {
		// Every call carries the AppSecret in its query string.
		errs = append(errs, fmt.Errorf("WX_API_BASE: plain http:// would send the AppSecret in clear; use https:// (http:// only to a loopback host), got %q", w.APIBase))
	}
	if w.HTTPTimeout <= 0 {
		errs = append(errs, errors.New("WX_HTTP_TIMEOUT: must be positive"))
	}
	if w.MaxAttempts < 1 || w.MaxAttempts > 10 {
		errs = append(errs, errors.New("WX_MAX_ATTEMPTS: must be 1 to 10"))
	}
	if w.Rate < 0 {
		errs = append(errs, errors.New("WX_RATE: must not be negative"))
	}
	if w.Burst < 0 {
		errs = append(errs, errors.New("WX_BURST: must not be negative"))
	}
	if w.Concurrency < 1 {
		errs = append(errs, errors.New("WORKER_CONCURRENCY: must be at least 1"))
	}
	if w.RequestTimeout <= 0 {
		errs = append(errs, errors.New("WORKER_REQUEST_TIMEOUT: must be positive"))
	}
	if w.ResultTTL < 10*time.Second {
		errs = append(errs, errors.New("WX_RESULT_TTL: must be at least 10s"))
	}
	if w.ClaimTTL < time.Second {
		errs = append(errs, errors.New("WX_CLAIM_TTL: must be at least 1s"))
	}
	if w.KVReplicas < 1 || w.KVReplicas > 5 {
		errs = append(errs, errors.New("WORKER_KV_REPLICAS: must be 1 to 5"))
	}
	if w.KVMaxBytes < minKVBytes {
		errs = append(errs, fmt.Errorf("WORKER_KV_MAX_BYTES: must be at least %d", minKVBytes))
	}
	if w.RateKVMaxBytes < minKVBytes {
		errs = append(errs, fmt.Errorf("WORKER_RATE_KV_MAX_BYTES: must be at least %d", minKVBytes))
	}
	if w.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(w.MetricsAddr); err != nil {
			errs = append(errs, fmt.Errorf("WORKER_METRICS_ADDR: want [host]:port or empty, got %q", w.MetricsAddr))
		}
	}
	return errors.Join(errs...)
}

// loadFiles reads WX_APPS_FILE and WX_CA_FILE. With appsRequired (a
// worker; the all-in-one has its demo app) it is an error to end with no
// app at all.
func (w *Worker) loadFiles(appsRequired bool) error {
	var errs []error
	if w.AppsFile != "" {
		// WX_APPS's own entries passed validate, so a placeholder
		// found now came from the file.
		if err := w.Apps.addFile(w.AppsFile); err != nil {
			errs = append(errs, err)
		} else if err := w.Apps.placeholders("WX_APPS_FILE"); err != nil {
			errs = append(errs, err)
		}
	}
	if appsRequired && len(w.Apps) == 0 {
		errs = append(errs, errors.New("WX_APPS or WX_APPS_FILE: at least one appid:secret is required"))
	}
	errs = append(errs, w.readStoreKey())
	if w.CAFile != "" {
		roots, err := ReadRoots(w.CAFile)
		if err != nil {
			errs = append(errs, err)
		}
		w.roots = roots
	}
	return errors.Join(errs...)
}

// minKVBytes is the least byte limit of a bucket: room for a few
// thousand records, below which a bucket would be full at once.
const minKVBytes = 1 << 20

// readStoreKey sets storeKey from WX_STORE_KEY or WX_STORE_KEY_FILE.
func (w *Worker) readStoreKey() error {
	w.storeKey = nil
	key := []byte(w.StoreKey)
	switch {
	case w.StoreKey != "" && w.StoreKeyFile != "":
		return errors.New("WX_STORE_KEY and WX_STORE_KEY_FILE: set one, not both")
	case w.StoreKeyFile != "":
		b, err := os.ReadFile(w.StoreKeyFile)
		if err != nil {
			return fmt.Errorf("WX_STORE_KEY_FILE: %w", err)
		}
		key = []byte(strings.TrimSpace(string(b)))
	}
	if len(key) == 0 {
		return nil
	}
	if err := placeholder("WX_STORE_KEY", string(key)); err != nil {
		return err
	}
	if len(key) < seal.MinStoreKey {
		// The length only: never the value.
		return fmt.Errorf("WX_STORE_KEY: want at least %d bytes, got %d", seal.MinStoreKey, len(key))
	}
	w.storeKey = key
	return nil
}

func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || strings.ContainsAny(tok, " \t\r\n*>") {
			return false
		}
	}
	return true
}

// WantsHelp reports whether args ask for the usage table.
func WantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help", "help":
			return true
		}
	}
	return false
}

// Prefixes is a comma-separated list of CIDRs, such as
// EDGE_TRUSTED_PROXIES. A bare address counts as its own /32 or /128.
type Prefixes []netip.Prefix

// Decode parses the list; errors name the entry by position.
func (p *Prefixes) Decode(value string) error {
	var out Prefixes
	for i, s := range strings.Split(value, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("entry %d: want a CIDR such as 10.0.0.0/8, got %q", i+1, s)
		}
		out = append(out, pf.Masked())
	}
	*p = out
	return nil
}
