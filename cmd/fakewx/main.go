// Command fakewx is a standalone fake of WeChat's code2Session endpoint for
// development, demos and benchmarks: point a worker's WX_API_BASE at it.
// Every code works once; codes of the form fx-<directive>-… misbehave on
// purpose (see package internal/fakewx). With FAKEWX_TLS=true it serves
// HTTPS and offers HTTP/2, as an HTTPS server may, with a self-signed
// certificate that FAKEWX_CA_OUT writes out for a worker's WX_CA_FILE.
// Configured from the environment: fakewx -h lists the variables.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wxlogin/wxlogin/internal/config"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/httpserver"
	"github.com/wxlogin/wxlogin/internal/logging"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "fakewx:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg config.FakeWXConfig
	if config.WantsHelp(args) {
		return config.Usage(stderr, &cfg)
	}
	if err := config.Load(&cfg); err != nil {
		return err
	}
	logger := logging.New(stderr, cfg.Level, cfg.Format)

	apps := []fakewx.App{fakewx.DemoApp()}
	if len(cfg.Apps) > 0 {
		apps = apps[:0]
		for _, id := range cfg.Apps.IDs() {
			apps = append(apps, fakewx.App{AppID: id, Secret: string(cfg.Apps[id]), UnionID: true})
		}
	}
	fake := fakewx.New(fakewx.Config{Apps: apps, Latency: cfg.Latency})
	logger.Warn("FAKE WeChat: answers are made up; never point production at this", "apps", cfg.Apps.String(), "latency", cfg.Latency)
	if len(cfg.Apps) == 0 {
		logger.Info("serving the demo app; its secret is fakewx.DemoSecret (see the README)", "appid", fakewx.DemoAppID)
	}
	srv := httpserver.New(fake, time.Minute, logger)
	if !cfg.TLS {
		return httpserver.Run(ctx, srv, cfg.Addr, time.Second, logger)
	}

	// HTTPS, as WeChat is reached: a fresh certificate each start, whose
	// PEM a worker trusts through WX_CA_FILE (FAKEWX_CA_OUT).
	cert, err := fakewx.NewTLSCert(cfg.TLSHosts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	if cfg.CAOut != "" {
		if err := writeFile(cfg.CAOut, cert.PEM()); err != nil {
			ln.Close()
			return fmt.Errorf("FAKEWX_CA_OUT: %w", err)
		}
	}
	logger.Info("serving HTTPS with a self-signed certificate for 127.0.0.1, ::1, localhost and FAKEWX_TLS_HOSTS; HTTP/2 offered", "hosts", cfg.TLSHosts, "ca_out", cfg.CAOut)
	return httpserver.Serve(ctx, srv, cert.Listener(ln), time.Second, logger)
}

// writeFile replaces path with data at once, through a file renamed into
// place, so that a worker started on it never reads half a certificate.
func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	// A certificate is public; the key never leaves this process.
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
