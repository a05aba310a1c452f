package dedup

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
)

func TestKeyIsKeyedAndHidesTheCode(t *testing.T) {
	k := Key("secret", "wxapp", "0712cDoV0cfty22AeloV0daMoV02cDog")
	if strings.Contains(k, "0712cDoV") || len(k) != 32 {
		t.Errorf("key %q", k)
	}
	if k != Key("secret", "wxapp", "0712cDoV0cfty22AeloV0daMoV02cDog") {
		t.Error("not deterministic: workers would not meet")
	}
	for _, other := range []string{Key("other", "wxapp", "0712cDoV0cfty22AeloV0daMoV02cDog"), Key("secret", "wxapp2", "0712cDoV0cfty22AeloV0daMoV02cDog"), Key("secret", "wxap", "p0712cDoV0cfty22AeloV0daMoV02cDog")} {
		if other == k {
			t.Error("distinct (secret, appid, code) share a key")
		}
	}
}

func TestStoredFormatKeepsOnlyTheReply(t *testing.T) {
	e := protocol.New(protocol.KindInvalidCode, "bad code")
	e.WxErrcode = 40029
	e.Cause = errString("rid: secret detail")
	for _, a := range []answer{{Result: protocol.Result{OpenID: "o1", UnionID: "u1"}}, {Err: e}} {
		b := a.encode()
		if strings.Contains(string(b), "secret detail") || strings.Contains(string(b), "session") {
			t.Errorf("stored %s", b)
		}
		got, ok := decode(b)
		if !ok || got.Result != a.Result || (a.Err != nil && (got.Err.Kind != e.Kind || got.Err.WxErrcode != 40029 || got.Err.Status != 401)) {
			t.Errorf("round trip of %s: %+v", b, got)
		}
	}
	if a, ok := decode(claimValue); !ok || !a.claim {
		t.Error("claim not recognised")
	}
	if _, ok := decode([]byte("garbage")); ok {
		t.Error("garbage decoded")
	}
}

func TestFinalAnswersOnly(t *testing.T) {
	for kind, want := range map[protocol.Kind]bool{
		protocol.KindInvalidCode: true, protocol.KindCodeUsed: true, protocol.KindUserBlocked: true,
		protocol.KindUpstream: false, protocol.KindTimeout: false, protocol.KindRateLimited: false, protocol.KindUnavailable: false,
	} {
		if got := (answer{Err: protocol.New(kind, "x")}).final(); got != want {
			t.Errorf("%s final=%v, want %v", kind, got, want)
		}
	}
}

func TestCacheBoundsAndExpiry(t *testing.T) {
	c := newCache(time.Hour, 10)
	for i := range 100 {
		c.put(string(rune('a'+i%26))+string(rune(i)), answer{}.encode())
	}
	if n := len(c.cur.places) + len(c.prev.places); n > 10 {
		t.Errorf("cache holds %d entries, max 10", n)
	}
	v := answer{Result: protocol.Result{OpenID: "o"}}.encode()
	for range 10_000 { // one key again and again: its old copies must not pile up
		c.put("same", v)
	}
	if n := c.cur.size + c.prev.size; n > 10*maxAnswerBytes {
		t.Errorf("cache holds %d bytes for max 10 answers", n)
	}
	c = newCache(time.Minute, 100)
	c.put("k", answer{Result: protocol.Result{OpenID: "o"}}.encode())
	c.since = c.since.Add(-61 * time.Second) // one generation later: still there
	if _, ok := c.get("k"); !ok {
		t.Error("forgotten after one TTL; answers must live at least a TTL")
	}
	c.since = c.since.Add(-61 * time.Second) // two generations: gone
	if _, ok := c.get("k"); ok {
		t.Error("kept past two TTLs")
	}
}

// The cache gives back what was put, for every key shape and answer kind,
// whichever generation holds it.
func TestCacheKeepsAnswers(t *testing.T) {
	used := protocol.New(protocol.KindCodeUsed, "code already used")
	used.WxErrcode = 40163
	keys := []string{Key("s", "wxapp", "code-1"), Key("s", "wxapp", "code-2"), "short", strings.Repeat("z", 32)}
	answers := []answer{
		{Result: protocol.Result{OpenID: "oA", UnionID: "uA"}},
		{Result: protocol.Result{OpenID: "oB"}},
		{Err: used},
		{Result: protocol.Result{OpenID: "oD", UnionID: "uD"}},
	}
	c := newCache(time.Minute, 6) // 3 per generation: the first answers move to prev
	for i, k := range keys {
		c.put(k, answers[i].encode())
	}
	for i, k := range keys {
		got, ok := c.get(k)
		if !ok {
			t.Fatalf("%s: not found", k)
		}
		want := answers[i]
		if got.Result != want.Result || (got.Err == nil) != (want.Err == nil) {
			t.Fatalf("%s: got %+v, want %+v", k, got, want)
		}
		if want.Err != nil && (got.Err.Kind != want.Err.Kind || got.Err.WxErrcode != want.Err.WxErrcode ||
			got.Err.Message != want.Err.Message || got.Err.Status != want.Err.Status) {
			t.Fatalf("%s: error %+v, want %+v", k, got.Err, want.Err)
		}
	}
	if _, ok := c.get(Key("s", "wxapp", "code-3")); ok {
		t.Error("found a key never put")
	}
}

// The cache is kept free of pointers so that the garbage collector skips
// its answers (see cache); a field that adds one brings the marking
// cost back.
func TestCacheHoldsNoPointers(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[slot](), reflect.TypeFor[place]()} {
		if p := pointerIn(typ); p != "" {
			t.Errorf("%s holds a pointer (%s)", typ, p)
		}
	}
}

func pointerIn(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Array:
		return pointerIn(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if p := pointerIn(t.Field(i).Type); p != "" {
				return t.Field(i).Name + ": " + p
			}
		}
		return ""
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return ""
	}
	return t.Kind().String()
}

type errString string

func (e errString) Error() string { return string(e) }

func TestAckSequence(t *testing.T) {
	for ack, want := range map[string]uint64{
		`{"stream":"KV_wxlogin_results","seq":42}`:                                       42,
		`{"stream":"KV_x","domain":"d","seq":7,"duplicate":false}`:                       7,
		`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}`: 0,
		`{"stream":"KV_x","seq":0}`:                                                      0,
		`garbage`:                                                                        0,
	} {
		got, ok := ackSequence([]byte(ack))
		if got != want || ok != (want > 0) {
			t.Errorf("%s: got %d %v, want %d", ack, got, ok, want)
		}
	}
}

func TestKeyerMatchesKey(t *testing.T) {
	k := NewKeyer("secret", "wxapp")
	for _, code := range []string{"a", "0712cDoV0cfty22AeloV0daMoV02cDog", "0712cDoV0cfty22AeloV0daMoV02cDog", "other"} {
		if got, want := k.Key(code), Key("secret", "wxapp", code); got != want {
			t.Fatalf("Keyer.Key(%q) = %s, Key = %s", code, got, want)
		}
	}
}
