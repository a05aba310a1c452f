// Package httpserver runs an http.Server the way every wxlogin binary
// does: listen first (so a bad address fails at start), serve until the
// context ends, then shut down gracefully with a fresh deadline.
package httpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"syscall"
	"time"
)

// The limits New sets, exported so that tests can check them and size
// their attacks (a slowloris test must outlast ReadHeaderTimeout).
const (
	// ReadHeaderTimeout cuts off a client that dribbles its headers
	// (slowloris); it also bounds how long a new connection may stay
	// silent.
	ReadHeaderTimeout = 5 * time.Second
	// ReadTimeout bounds reading a whole request, body included.
	ReadTimeout = 10 * time.Second
	// IdleTimeout closes keep-alive connections left unused.
	IdleTimeout = 90 * time.Second
	// MaxHeaderBytes caps request headers; net/http answers 431 past it
	// (it allows 4 KiB of slack on top).
	MaxHeaderBytes = 16 << 10
)

// New returns a server for h with every timeout set: a server without
// them is an easy target for slow clients.
func New(h http.Handler, writeTimeout time.Duration, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// Run listens on addr and serves srv until ctx ends, then gives in-flight
// requests up to grace to finish.
func Run(ctx context.Context, srv *http.Server, addr string, grace time.Duration, logger *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return Serve(ctx, srv, ln, grace, logger)
}

// Listen listens on addr. With mayMove, an address already in use (a
// default port another process on the host holds, such as a second
// worker) gives way to a free port on the same host, logged at warn so
// the operator can find it; without, it is an error, since the operator
// chose that address.
func Listen(addr string, mayMove bool, logger *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil || !mayMove || !errors.Is(err, syscall.EADDRINUSE) {
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		return ln, nil
	}
	host, _, _ := net.SplitHostPort(addr)
	ln, err2 := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err2 != nil {
		return nil, fmt.Errorf("listening on %s: %w; on a free port instead: %w", addr, err, err2)
	}
	logger.Warn("default address in use (another process on this host?); listening on a free port instead",
		"wanted", addr, "addr", ln.Addr().String())
	return ln, nil
}

// Serve is Run on a listener the caller opened, for when the address must
// be known before serving starts.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, logger *slog.Logger) error {
	addr := ln.Addr().String()
	logger.Info("http listening", "addr", addr)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving http on %s: %w", addr, err)
	case <-ctx.Done():
	}
	// The parent context is done; shut down with a fresh one.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down http on %s: %w", addr, err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Debug serves Go's profiler (net/http/pprof) on addr until ctx ends; with
// addr empty it returns nil at once. Profiles show code paths and sizes,
// not memory contents, but they do show how the program works: serve
// them on a loopback or private address only. (Importing net/http/pprof
// also registers it on http.DefaultServeMux, which no wxlogin server
// serves.)
func Debug(ctx context.Context, addr string, logger *slog.Logger) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// A CPU profile or trace takes as long as it was asked to; pprof
	// refuses one longer than the write timeout.
	srv := New(mux, 5*time.Minute, logger)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("DEBUG_ADDR: listening on %s: %w", addr, err)
	}
	logger.Info("profiler listening", "addr", ln.Addr().String(), "path", "/debug/pprof/")
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving the profiler on %s: %w", addr, err)
	case <-ctx.Done():
	}
	// No grace: a profile being taken is cut short rather than holding up
	// the shutdown.
	srv.Close()
	<-errc
	return nil
}
