package reliability_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/dev/testbed"
	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/token"
)

// TestTokensNeverLogged runs logins and session checks through the whole
// stack, over HTTP and NATS, good tokens and bad, with every component
// logging at debug, and then looks for any token, any token's signature
// and the signing key in the logs.
func TestTokensNeverLogged(t *testing.T) {
	b := testbed.New(t, testbed.Options{})
	key, err := token.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.WorkerConfig()
	cfg.Tokens, err = token.NewIssuer([]token.Key{key}, token.Options{Issuer: "wxlogin", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b.StartWorker(cfg)
	base := b.StartEdge(3 * time.Second)
	nc := b.Connect("client")

	var tokens []string
	for _, code := range []string{"log-1", "log-1", "log-2"} { // a repeat too
		resp, err := http.Get(base + "/v1/openid?code=" + code)
		if err != nil {
			t.Fatal(err)
		}
		var res protocol.Result
		json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		tokens = append(tokens, res.Token)
		res, e := b.Request(nc, protocol.Request{Code: code + "-nats"}, 3*time.Second)
		if e != nil {
			t.Fatal(e)
		}
		tokens = append(tokens, res.Token)
	}
	for _, tok := range tokens {
		if tok == "" {
			t.Fatal("a success without a token")
		}
		for _, auth := range []string{tok, tok[:len(tok)-4] + "AAAA", strings.ToUpper(tok)} {
			req, _ := http.NewRequest("GET", base+"/v1/session", nil)
			req.Header.Set("Authorization", "Bearer "+auth)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			body, _ := json.Marshal(protocol.SessionRequest{Token: auth})
			if _, err := nc.Request(protocol.SessionSubject(protocol.DefaultSubjectPrefix), body, 2*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}

	logs := b.Logs.String()
	for _, want := range []string{`"msg":"exchange"`, `"msg":"request"`, `"msg":"session refused"`} {
		if !strings.Contains(logs, want) {
			t.Fatalf("no %s line captured at debug: the check below would prove nothing", want)
		}
	}
	pem, _ := token.EncodePEM(key)
	secrets := []string{strings.Split(string(pem), "\n")[1]}
	for _, tok := range tokens {
		secrets = append(secrets, tok, tok[strings.LastIndexByte(tok, '.')+1:])
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Fatalf("the logs contain a token or key (%.12s…)", s)
		}
	}
}
