package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/fakewx"
)

// TestRunTLS runs the binary's run with FAKEWX_TLS and checks that a
// client trusting the PEM of FAKEWX_CA_OUT exchanges a code over HTTP/2,
// and one that speaks only HTTP/1.1 over HTTP/1.1.
func TestRunTLS(t *testing.T) {
	addr := testbed.FreeAddr(t)
	caFile := filepath.Join(t.TempDir(), "fakewx-ca.pem")
	t.Setenv("FAKEWX_ADDR", addr)
	t.Setenv("FAKEWX_TLS", "true")
	t.Setenv("FAKEWX_CA_OUT", caFile)
	t.Setenv("FAKEWX_TLS_HOSTS", "fakewx,fakewx.example")
	t.Setenv("LOG_LEVEL", "warn")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard) }()

	// The file is written once the listener is open.
	var pemBytes []byte
	testbed.Eventually(t, 10*time.Second, "FAKEWX_CA_OUT written", func() bool {
		var err error
		pemBytes, err = os.ReadFile(caFile)
		return err == nil
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("FAKEWX_CA_OUT holds no certificate: %q", pemBytes)
	}
	if strings.Contains(string(pemBytes), "PRIVATE KEY") {
		t.Fatal("FAKEWX_CA_OUT holds the private key")
	}
	// Valid for the Compose service name, as a worker in another
	// container reaches it.
	block, _ := pem.Decode(pemBytes)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"localhost", "fakewx", "fakewx.example"} {
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("certificate: %v", err)
		}
	}

	for i, tc := range []struct {
		name   string
		protos func(*http.Protocols)
		major  int
	}{
		{"HTTP/2 and HTTP/1.1 offered", func(p *http.Protocols) { p.SetHTTP1(true); p.SetHTTP2(true) }, 2},
		{"HTTP/1.1 only", func(p *http.Protocols) { p.SetHTTP1(true) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var protos http.Protocols
			tc.protos(&protos)
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Protocols: &protos}
			defer tr.CloseIdleConnections()
			code := "fakewx-tls-" + strconv.Itoa(i)
			q := url.Values{"appid": {fakewx.DemoAppID}, "secret": {fakewx.DemoSecret}, "js_code": {code}, "grant_type": {"authorization_code"}}
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + fakewx.Path + "?" + q.Encode())
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var answer struct {
				OpenID string `json:"openid"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
				t.Fatal(err)
			}
			if resp.ProtoMajor != tc.major || answer.OpenID != fakewx.OpenID(fakewx.DemoAppID, code) {
				t.Errorf("%s, openid %q; want HTTP/%d and the code's openid", resp.Proto, answer.OpenID, tc.major)
			}
		})
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return")
	}
}

func TestCAOutNeedsTLS(t *testing.T) {
	t.Setenv("FAKEWX_ADDR", testbed.FreeAddr(t))
	t.Setenv("FAKEWX_TLS", "false")
	t.Setenv("FAKEWX_CA_OUT", filepath.Join(t.TempDir(), "ca.pem"))
	err := run(context.Background(), nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "FAKEWX_CA_OUT") {
		t.Fatalf("got %v, want an error naming FAKEWX_CA_OUT", err)
	}
}
