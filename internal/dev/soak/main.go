// Command soak (task soak) runs wxlogin in one process (an embedded NATS server with
// JetStream, a fake WeChat that misbehaves on purpose, workers and an
// edge) and drives it at a steady rate for a long time (task soak: 10
// minutes). Every few seconds it prints latency, answers by kind,
// goroutines and memory; at the end it says whether memory stayed flat,
// and fails if it grew, if an answer carried the wrong openid, or if one
// came later than EDGE_TIMEOUT allows. soak -h lists the flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args, stdout)
	if errors.Is(err, errHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	st, err := startStack(ctx, o)
	if err != nil {
		return err
	}
	res := drive(ctx, o, st.EdgeURL(), stdout)
	if err := st.Stop(); err != nil {
		fmt.Fprintln(stdout, "stopping:", err)
	}
	return res.verdict(o, stdout)
}
