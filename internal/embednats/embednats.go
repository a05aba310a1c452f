// Package embednats runs nats-server inside our own process: the
// all-in-one binary's server, and the real servers (single or clustered)
// that every test starts instead of mocking NATS.
package embednats

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options says what server to run.
type Options struct {
	Name string // server name; unique within a cluster
	Host string // default 127.0.0.1
	Port int    // 0 means 4222; -1 a random free port

	JetStream bool
	StoreDir  string // required with JetStream

	// Cluster: a name turns clustering on. ClusterPort -1 picks a free
	// port; Routes are other nodes' cluster URLs (nats-route://host:port).
	ClusterName string
	ClusterPort int
	Routes      []string

	// Access, when set, replaces the open default (anyone may do
	// anything) with its accounts and users.
	Access *Access
}

// Start runs a server and waits until it accepts clients.
func Start(o Options, logger *slog.Logger) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	opts := &server.Options{
		ServerName: o.Name,
		Host:       o.Host,
		Port:       o.Port,
		NoSigs:     true,
		JetStream:  o.JetStream,
		StoreDir:   o.StoreDir,
		// The embedded server is a building block, not a monitored
		// daemon: no HTTP monitoring port of its own.
		HTTPPort: 0,
	}
	if o.JetStream && o.StoreDir == "" {
		return nil, errors.New("embedded nats: JetStream needs a store directory")
	}
	if o.ClusterName != "" {
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("embedded nats: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	if o.Access != nil {
		if err := o.Access.configure(opts); err != nil {
			return nil, err
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if logger != nil {
		s.SetLoggerV2(&slogAdapter{logger.With("component", "nats-server")}, false, false, false)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready to accept connections on %s:%d", o.Host, o.Port)
	}
	if o.Access != nil && o.JetStream {
		if err := o.Access.enableJetStream(s); err != nil {
			s.Shutdown()
			return nil, err
		}
	}
	return s, nil
}

// slogAdapter lets nats-server log through our logger. Its notices are
// routine chatter for us, so they go to debug.
type slogAdapter struct{ l *slog.Logger }

func (a *slogAdapter) Noticef(format string, v ...any) { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Warnf(format string, v ...any)   { a.l.Warn(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Fatalf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Errorf(format string, v ...any)  { a.l.Error(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Debugf(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
func (a *slogAdapter) Tracef(format string, v ...any)  { a.l.Debug(fmt.Sprintf(format, v...)) }
