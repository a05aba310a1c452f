package discovery_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/wxlogin/wxlogin/internal/dev/natstest"
	"github.com/wxlogin/wxlogin/internal/discovery"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// addWorker registers a wxlogin micro service serving prefix's subject,
// as a worker does, on a connection of its own.
func addWorker(t *testing.T, url, prefix string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := micro.AddService(nc, micro.Config{Name: protocol.ServiceName, Version: "0.0.0-test", QueueGroup: protocol.QueueGroup})
	if err != nil {
		t.Fatal(err)
	}
	err = svc.AddEndpoint(protocol.EndpointName, micro.HandlerFunc(func(micro.Request) {}),
		micro.WithEndpointSubject(protocol.Subject(prefix)))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestProbe(t *testing.T) {
	ns := natstest.Start(t, true)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subject := protocol.Subject(protocol.DefaultSubjectPrefix)
	ctx := context.Background()

	// Nobody there: the server says so at once.
	start := time.Now()
	res, err := discovery.Probe(ctx, nc, subject, 5*time.Second, nil)
	if err != nil || !res.NoResponders || res.Serving != 0 {
		t.Fatalf("nobody there: got %+v, %v", res, err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("no responders took %v: the window was waited out", took)
	}

	// Two workers of ours, one of another pool on the same account.
	addWorker(t, ns.ClientURL(), protocol.DefaultSubjectPrefix)
	addWorker(t, ns.ClientURL(), protocol.DefaultSubjectPrefix)
	addWorker(t, ns.ClientURL(), "otherpool")
	var seen []int
	res, err = discovery.Probe(ctx, nc, subject, 500*time.Millisecond, func(n int) { seen = append(seen, n) })
	if err != nil || res.Serving != 2 || res.Others != 1 || res.NoResponders {
		t.Fatalf("got %+v, %v; want 2 serving and 1 other", res, err)
	}
	if len(seen) != 2 || seen[0] != 1 || seen[1] != 2 {
		t.Errorf("seen called with %v, want [1 2]", seen)
	}

	nc.Close()
	if _, err := discovery.Probe(ctx, nc, subject, time.Second, nil); err != nats.ErrDisconnected {
		t.Errorf("closed connection: got %v, want nats.ErrDisconnected", err)
	}
}
