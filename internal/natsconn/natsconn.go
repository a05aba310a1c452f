// Package natsconn connects edge and worker to NATS the same way: the
// credentials and TLS of the environment contract, and a connection that
// never gives up. An unreachable server is not a configuration error: the
// process starts, keeps trying, and reconnects for ever after a loss.
package natsconn

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/logging"
)

// Options returns the connection options for cfg, logging connection
// events to logger under name.
func Options(cfg config.NATS, name string, logger *slog.Logger) ([]nats.Option, error) {
	authOpts, err := auth(cfg, logger.With("nats", name))
	if err != nil {
		return nil, err
	}
	opts := append(Resilient(name, logger), authOpts...)
	if cfg.NKey != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKey)
		if err != nil {
			return nil, fmt.Errorf("NATS_NKEY: %w", err)
		}
		opts = append(opts, o)
	}
	return opts, nil
}

// Resilient returns the options every wxlogin connection has, whatever
// the server: retry the first connect, reconnect for ever, and log state
// changes.
func Resilient(name string, logger *slog.Logger) []nats.Option {
	logger = logger.With("nats", name)
	return []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
		}),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", logging.Err(err))
				return
			}
			logger.Info("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted(), "server", nc.ConnectedServerName())
		}),
		nats.ErrorHandler(func(nc *nats.Conn, sub *nats.Subscription, err error) {
			// Slow consumers land here: the worker fell behind and NATS
			// dropped messages, whose requesters will time out.
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Error("nats async error", "subject", subject, logging.Err(err))
		}),
	}
}

func auth(cfg config.NATS, logger *slog.Logger) ([]nats.Option, error) {
	var opts []nats.Option
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	switch {
	case cfg.PasswordFile != "":
		pw, err := newSecretFile("NATS_PASSWORD_FILE", cfg.PasswordFile, logger)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfoHandler(func() (string, string) { return cfg.User, pw.read() }))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, string(cfg.Password)))
	}
	switch {
	case cfg.TokenFile != "":
		tok, err := newSecretFile("NATS_TOKEN_FILE", cfg.TokenFile, logger)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.TokenHandler(tok.read))
	case cfg.Token != "":
		opts = append(opts, nats.Token(string(cfg.Token)))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts, nil
}

// secretFile is a password or token kept in a file, such as a mounted
// Kubernetes secret. It is read at every connect, like the credentials
// and certificate files, so that a rotated secret is used at the next
// reconnect without a restart.
type secretFile struct {
	name, path string
	logger     *slog.Logger

	mu   sync.Mutex
	last string // the last value read, used when a later read fails
}

// newSecretFile reads the file once, so that a missing or empty file
// fails at start rather than at the first reconnect.
func newSecretFile(name, path string, logger *slog.Logger) (*secretFile, error) {
	v, err := readSecret(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &secretFile{name: name, path: path, logger: logger, last: v}, nil
}

func (f *secretFile) read() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := readSecret(f.path)
	if err != nil {
		// A secret mount is replaced atomically, so a failed read is
		// rare and brief; the last good value is the best guess.
		f.logger.Warn("reading a secret file failed; using its last value", "var", f.name, logging.Err(err))
		return f.last
	}
	f.last = v
	return v
}

// readSecret returns the file's content without surrounding white space:
// secrets written with echo or an editor end in a newline that is not
// part of the secret.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return v, nil
}

// Connect connects to cfg.URL. It fails only for settings that can never
// work (unreadable credentials or certificates), not for an absent server.
func Connect(cfg config.NATS, name string, logger *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := Options(cfg, name, logger)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(cfg.URL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connecting to nats: %w", err)
	}
	if !nc.IsConnected() {
		logger.Warn("nats not reachable yet; retrying in the background", "url", Redact(cfg.URL))
	}
	return nc, nil
}

// Redact hides passwords in nats://user:password@host URLs.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
