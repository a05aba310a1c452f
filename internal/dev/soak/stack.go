package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/wxlogin/wxlogin/internal/edge"
	"github.com/wxlogin/wxlogin/internal/embednats"
	"github.com/wxlogin/wxlogin/internal/exchange"
	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/logging"
	"github.com/wxlogin/wxlogin/internal/stack"
)

// options are the soak's flags.
type options struct {
	duration  time.Duration
	rate      float64
	every     time.Duration
	warmup    time.Duration // 0: 30% of the duration
	workers   int
	latency   time.Duration // fake WeChat's latency on every answer
	timeout   time.Duration // EDGE_TIMEOUT
	resultTTL time.Duration // WX_RESULT_TTL
	codeTTL   time.Duration // how long the fake remembers a code
	maxGrowth float64       // percent
	logLevel  string
}

var errHelp = errors.New("help")

func parseFlags(args []string, stdout io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to drive the service")
	fs.Float64Var(&o.rate, "rate", 200, "requests per second, sent at a steady pace whatever the answers")
	fs.DurationVar(&o.every, "every", 10*time.Second, "report interval")
	fs.DurationVar(&o.warmup, "warmup", 0,
		"start of the run left out of the memory verdict; 0 means 30% of -duration, or twice the longer TTL plus 5s if that is longer")
	fs.IntVar(&o.workers, "workers", 2, "workers, each on its own NATS connection")
	fs.DurationVar(&o.latency, "latency", 20*time.Millisecond, "fake WeChat's latency on every answer")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Second, "EDGE_TIMEOUT")
	fs.DurationVar(&o.resultTTL, "result-ttl", time.Minute,
		"WX_RESULT_TTL: answers are kept this long (up to twice as long in a worker), so memory levels off only after that")
	fs.DurationVar(&o.codeTTL, "code-ttl", 30*time.Second, "how long the fake WeChat remembers a code (its memory levels off after twice that)")
	fs.Float64Var(&o.maxGrowth, "max-growth", 20, "fail if mean RSS or heap of the last third grew by more than this many percent over the first third (and by more than 8 MiB)")
	fs.StringVar(&o.logLevel, "log-level", "error", "level of the components' own log lines: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, errHelp
		}
		return o, err
	}
	var errs []error
	if o.duration <= 0 || o.every <= 0 || o.rate <= 0 || o.workers < 1 || o.timeout <= 0 || o.latency < 0 {
		errs = append(errs, errors.New("-duration, -every, -rate, -workers and -timeout must be positive, -latency not negative"))
	}
	if o.warmup == 0 {
		// Remembered answers and codes fill memory for up to twice their
		// TTL before old ones go; only after that is flat memory expected.
		o.warmup = max(o.duration*3/10, 2*max(o.resultTTL, o.codeTTL)+5*time.Second)
	}
	if o.warmup < 0 {
		errs = append(errs, errors.New("-warmup must not be negative"))
	}
	if o.resultTTL <= 0 || o.codeTTL <= 0 {
		errs = append(errs, errors.New("-result-ttl and -code-ttl must be positive"))
	}
	return o, errors.Join(errs...)
}

// startStack starts the pieces through package stack, as the all-in-one
// does (over TCP rather than in process, as a split deployment runs), with
// the fake WeChat misbehaving as the codes ask. It returns once an
// exchange goes through end to end.
func startStack(ctx context.Context, o options) (*stack.Stack, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	st, err := stack.Start(ctx, stack.Options{
		Logger:   logging.New(os.Stderr, level, "text"),
		Embedded: embednats.Options{Name: "soak", Port: -1, JetStream: true},
		Fake:     fakewx.New(fakewx.Config{Apps: []fakewx.App{fakewx.DemoApp()}, Latency: o.latency, CodeTTL: o.codeTTL}),
		Workers:  o.workers,
		Worker: exchange.Config{
			Apps:           map[string]string{fakewx.DemoAppID: fakewx.DemoSecret},
			HTTPTimeout:    time.Second,
			MaxAttempts:    3,
			Concurrency:    1024,
			RequestTimeout: 5 * time.Second,
			ResultTTL:      o.resultTTL,
			ClaimTTL:       3 * time.Second,
			KVReplicas:     1,
		},
		Edge: &stack.EdgeOptions{Addr: "127.0.0.1:0", Config: edge.Config{Timeout: o.timeout, MaxBody: 4096}},
	})
	if err != nil {
		return nil, err
	}

	// Ready when an exchange goes through end to end.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		resp, err := http.Get(fmt.Sprintf("%s/v1/openid?code=soak-ready-%d", st.EdgeURL(), i))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			st.Stop()
			return nil, errors.New("the stack did not answer within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
