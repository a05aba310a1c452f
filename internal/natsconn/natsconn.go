// Package natsconn connects edge and worker to NATS the same way: the
// credentials and TLS of the environment contract, and a connection that
// never gives up. An unreachable server is not a configuration error: the
// process starts, keeps trying, and reconnects for ever after a loss.
package natsconn

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/logging"
)

// Options returns the connection options for cfg, logging connection
// events to logger under name.
func Options(cfg config.NATS, name string, logger *slog.Logger) ([]nats.Option, error) {
	opts := append(Resilient(name, logger), auth(cfg)...)
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

func auth(cfg config.NATS) []nats.Option {
	var opts []nats.Option
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, string(cfg.Password)))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(string(cfg.Token)))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	return opts
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
