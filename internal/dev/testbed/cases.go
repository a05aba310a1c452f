package testbed

import (
	"net/url"
	"time"

	"github.com/wxlogin/wxlogin/internal/fakewx"
	"github.com/wxlogin/wxlogin/internal/protocol"
)

// Case is one behaviour of the contract, checked over NATS (exchange
// tests) and over HTTP (edge tests) with the same table.
type Case struct {
	Name   string
	AppID  string
	Code   string
	Budget time.Duration // requester's budget; default 3s
	// Prepare runs before the request, e.g. to use the code up first.
	Prepare func(b *Bed, c Case)

	Kind       protocol.Kind // "" for success
	Status     int
	Retry      protocol.Retry
	Errcode    int
	RetryAfter bool // a Retry-After must come back
	Calls      int  // upstream calls the fake must have seen for Code
}

// Second app, for appid_required.
var App2 = fakewx.App{AppID: "wxtest0000000000b2", Secret: "SECRET-b2-never-logged"}

// Cases is the table. Workers under test serve App, and App2 only for the
// appid_required case (see TwoApps).
func Cases() []Case {
	return []Case{
		{Name: "success", Code: "ok-0712cDoV0cfty22AeloV0daMoV02cDog", Calls: 1},
		{Name: "success with appid", AppID: App.AppID, Code: "ok-with-appid", Calls: 1},
		{Name: "busy twice then success", Code: "fx-busy2-retry", Calls: 3},
		{Name: "invalid code", Code: "fx-invalid-1", Kind: protocol.KindInvalidCode, Status: 401, Retry: protocol.RetryNewCode, Errcode: 40029, Calls: 1},
		{Name: "code used", Code: "used-once", Prepare: func(b *Bed, c Case) { b.UseUp(c.Code) },
			Kind: protocol.KindCodeUsed, Status: 401, Retry: protocol.RetryNewCode, Errcode: 40163, Calls: 2},
		{Name: "user blocked", Code: "fx-blocked-1", Kind: protocol.KindUserBlocked, Status: 403, Retry: protocol.RetryNo, Errcode: 40226, Calls: 1},
		{Name: "busy for ever", Code: "fx-busy99-1", Kind: protocol.KindUpstream, Status: 502, Retry: protocol.RetrySameCode, Errcode: -1, Calls: 3},
		{Name: "upstream 5xx", Code: "fx-5xx99-1", Kind: protocol.KindUpstream, Status: 502, Retry: protocol.RetrySameCode, Calls: 3},
		{Name: "upstream garbage", Code: "fx-garbage99-1", Kind: protocol.KindUpstream, Status: 502, Retry: protocol.RetrySameCode, Calls: 3},
		{Name: "frequency limit", Code: "fx-limit99-1", Budget: 300 * time.Millisecond, Kind: protocol.KindRateLimited, Status: 429,
			Retry: protocol.RetrySameCode, Errcode: 45011, RetryAfter: true, Calls: -1},
		{Name: "unknown app", AppID: "wxnotours00000000", Code: "any-code", Kind: protocol.KindUnknownApp, Status: 400, Retry: protocol.RetryNo},
		{Name: "upstream hangs", Code: "fx-hang-1", Budget: 400 * time.Millisecond, Kind: protocol.KindTimeout, Status: 504, Retry: protocol.RetrySameCode, Calls: 1},
		{Name: "code with spaces", Code: "has space", Kind: protocol.KindBadRequest, Status: 400, Retry: protocol.RetryNo},
		{Name: "code too long", Code: string(make129()), Kind: protocol.KindBadRequest, Status: 400, Retry: protocol.RetryNo},
		{Name: "injection stays inside js_code", Code: "abc&secret=x&appid=y#frag", Calls: 1},
	}
}

func make129() []byte {
	b := make([]byte, protocol.MaxTokenLen+1)
	for i := range b {
		b[i] = 'a'
	}
	return b
}

// UseUp exchanges code once directly with the fake, as if another client
// had used it.
func (b *Bed) UseUp(code string) {
	b.T.Helper()
	q := url.Values{"grant_type": {"authorization_code"}, "appid": {App.AppID}, "secret": {App.Secret}, "js_code": {code}}
	resp, err := b.Upstream.Client().Get(b.Upstream.URL + fakewx.Path + "?" + q.Encode())
	if err != nil {
		b.T.Fatal(err)
	}
	resp.Body.Close()
}
