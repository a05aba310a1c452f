package dedup

import (
	"reflect"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wxlogin/wxlogin/internal/protocol"
	"github.com/wxlogin/wxlogin/internal/seal"
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
		c.put(string(rune('a'+i%26))+string(rune(i)), answer{}.encode(), time.Now().Add(time.Hour))
	}
	if n := len(c.cur.places) + len(c.prev.places); n > 10 {
		t.Errorf("cache holds %d entries, max 10", n)
	}
	v := answer{Result: protocol.Result{OpenID: "o"}}.encode()
	for range 10_000 { // one key again and again: its old copies must not pile up
		c.put("same", v, time.Now().Add(time.Hour))
	}
	if n := c.cur.size + c.prev.size; n > 10*maxAnswerBytes {
		t.Errorf("cache holds %d bytes for max 10 answers", n)
	}
}

// An answer is given from the cache until its expiry, and not after:
// however the generations turn, no layer keeps it past WX_RESULT_TTL.
func TestCacheKeepsAnswersNoLongerThanTheirTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ttl = 10 * time.Second
		c := newCache(ttl, 100)
		time.Sleep(ttl / 2) // a generation half way through its life
		c.put("k", answer{Result: protocol.Result{OpenID: "o"}}.encode(), time.Now().Add(ttl))
		time.Sleep(ttl - time.Millisecond)
		if _, ok := c.get("k"); !ok {
			t.Fatal("forgotten before its TTL")
		}
		time.Sleep(time.Millisecond)
		if _, ok := c.get("k"); ok {
			t.Fatal("given after its TTL")
		}
		// An answer read from the store expires when the stored one does.
		c.put("s", answer{Result: protocol.Result{OpenID: "o"}}.encode(), time.Now().Add(time.Second))
		time.Sleep(time.Second)
		if _, ok := c.get("s"); ok {
			t.Fatal("a stored answer outlived the store's copy in the cache")
		}
	})
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
		c.put(k, answers[i].encode(), time.Now().Add(time.Hour))
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

func TestKeyerMatchesKey(t *testing.T) {
	k := NewKeyer("secret", "wxapp", seal.NewMAC([]byte("k")))
	for _, code := range []string{"a", "0712cDoV0cfty22AeloV0daMoV02cDog", "0712cDoV0cfty22AeloV0daMoV02cDog", "other"} {
		if got, want := k.Key(code).Name, Key("secret", "wxapp", code); got != want {
			t.Fatalf("Keyer.Key(%q) = %s, Key = %s", code, got, want)
		}
	}
}
