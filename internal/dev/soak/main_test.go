package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestRunShort runs the whole soak for a few seconds: the stack starts,
// the mix flows, every line of the report is there, and it stops.
func TestRunShort(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Short TTLs and no warm-up, so that even 3s get a memory verdict.
	// Timeout 500ms keeps the hanging requests of the mix short.
	err := run(ctx, []string{"-duration", "3s", "-every", "500ms", "-rate", "50", "-timeout", "500ms",
		"-warmup", "1ms", "-result-ttl", "1s", "-code-ttl", "1s", "-max-growth", "1000"}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"answers by kind", "ok=", "memory: RSS", "memory: heap", "soak: PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFlags(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out); err != nil || !strings.Contains(out.String(), "-duration") {
		t.Errorf("-h: %v\n%s", err, out.String())
	}
	if err := run(context.Background(), []string{"-rate", "0"}, &out); err == nil {
		t.Error("-rate 0 accepted")
	}
	o, err := parseFlags(nil, &out)
	if err != nil || o.duration != 10*time.Minute || o.warmup != 3*time.Minute {
		t.Errorf("defaults: %+v %v", o, err)
	}
}
