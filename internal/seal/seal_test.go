package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func keys(t testing.TB, storeKey, appid, secret string) Keys {
	t.Helper()
	ks, err := Derive([]byte(storeKey), appid, secret)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestMACBindsValueToBucketAndKey(t *testing.T) {
	m := keys(t, "", "wxapp", "app-secret").Answers
	v := []byte(`{"openid":"oA"}`)
	s := m.Sign("results", "keyA", v)
	if got, err := m.Verify("results", "keyA", s); err != nil || !bytes.Equal(got, v) {
		t.Fatalf("round trip: %q %v", got, err)
	}
	for _, c := range []struct{ name, bucket, key string }{
		{"another key (user B's code)", "results", "keyB"},
		{"another bucket", "ratelimit", "keyA"},
		{"bucket and key run together", "resultsk", "eyA"},
	} {
		if _, err := m.Verify(c.bucket, c.key, s); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", c.name, err)
		}
	}
	for i := range s {
		bad := bytes.Clone(s)
		bad[i] ^= 1
		if _, err := m.Verify("results", "keyA", bad); !errors.Is(err, ErrInvalid) {
			t.Fatalf("byte %d flipped: %v, want ErrInvalid", i, err)
		}
	}
	if _, err := m.Verify("results", "keyA", v); err == nil {
		t.Error("an unsigned value passed")
	}
}

// Keys differ by app, purpose and source; the same inputs give the same
// keys on every worker.
func TestDeriveSeparatesKeys(t *testing.T) {
	base := keys(t, "", "wxapp", "app-secret")
	v := []byte("value")
	s := base.Answers.Sign("b", "k", v)
	if _, err := keys(t, "", "wxapp", "app-secret").Answers.Verify("b", "k", s); err != nil {
		t.Fatalf("another worker with the same secret: %v", err)
	}
	storeKey := strings.Repeat("k", MinStoreKey)
	for name, m := range map[string]*MAC{
		"another purpose":                   base.RateLimit,
		"another app":                       keys(t, "", "wxapp2", "app-secret").Answers,
		"another AppSecret (rotated)":       keys(t, "", "wxapp", "app-secret2").Answers,
		"WX_STORE_KEY set":                  keys(t, storeKey, "wxapp", "app-secret").Answers,
		"WX_STORE_KEY equal to a secret":    keys(t, "app-secret", "wxapp", "x").Answers,
		"WX_STORE_KEY, another app":         keys(t, storeKey, "wxapp2", "app-secret").Answers,
		"WX_STORE_KEY rotated":              keys(t, storeKey+"2", "wxapp", "app-secret").Answers,
		"WX_STORE_KEY, AppSecret unchanged": keys(t, strings.Repeat("j", MinStoreKey), "wxapp", "app-secret").Answers,
	} {
		if _, err := m.Verify("b", "k", s); err == nil {
			t.Errorf("%s: verified a value signed under the app-secret answers key", name)
		}
	}
	// With WX_STORE_KEY the AppSecret does not matter: rotating it keeps
	// the stored values.
	a := keys(t, storeKey, "wxapp", "old").Answers.Sign("b", "k", v)
	if _, err := keys(t, storeKey, "wxapp", "new").Answers.Verify("b", "k", a); err != nil {
		t.Errorf("AppSecret rotated under WX_STORE_KEY: %v", err)
	}
	if _, err := Derive(nil, "wxapp", ""); err == nil {
		t.Error("derived keys from nothing")
	}
}

func TestAEADRoundTripAndBinding(t *testing.T) {
	a := keys(t, "", "wxapp", "app-secret").Sessions
	plain := []byte("session-key-bytes")
	s := a.Seal("sessions", "o1", plain)
	if bytes.Contains(s, plain) {
		t.Fatal("the plaintext shows in the sealed value")
	}
	if got, err := a.Open("sessions", "o1", s); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("round trip: %q %v", got, err)
	}
	if s2 := a.Seal("sessions", "o1", plain); bytes.Equal(s, s2) {
		t.Error("two seals of one value are equal: nonce reused")
	}
	for name, open := range map[string]func() ([]byte, error){
		"another key":    func() ([]byte, error) { return a.Open("sessions", "o2", s) },
		"another bucket": func() ([]byte, error) { return a.Open("results", "o1", s) },
		"another app":    func() ([]byte, error) { return keys(t, "", "wxapp2", "app-secret").Sessions.Open("sessions", "o1", s) },
		"truncated":      func() ([]byte, error) { return a.Open("sessions", "o1", s[:len(s)-1]) },
		"a MAC'd value": func() ([]byte, error) {
			return a.Open("sessions", "o1", keys(t, "", "wxapp", "app-secret").Answers.Sign("sessions", "o1", plain))
		},
	} {
		if _, err := open(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := NewAEAD([]byte("short")); err == nil {
		t.Error("a short AEAD key was taken")
	}
}

// FuzzVerify: arbitrary stored bytes never panic and never verify unless
// they are exactly what Sign made.
func FuzzVerify(f *testing.F) {
	m := NewMAC([]byte("fuzz-key"))
	good := m.Sign("b", "k", []byte(`{"openid":"o"}`))
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{versionMAC})
	f.Add(append([]byte{versionAEAD}, good[1:]...))
	f.Add([]byte(`{"openid":"forged"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := m.Verify("b", "k", b)
		if err == nil && !bytes.Equal(b, m.Sign("b", "k", v)) {
			t.Fatalf("verified %x, which Sign did not make", b)
		}
	})
}

// FuzzOpen: arbitrary stored bytes never panic and never decrypt unless
// sealed under the key.
func FuzzOpen(f *testing.F) {
	a, err := NewAEAD(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	good := a.Seal("b", "k", []byte("secret"))
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte{versionAEAD})
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		// Only what Seal made opens (the fuzzing workers' good has a
		// nonce of its own, so compare what it holds).
		if p, err := a.Open("b", "k", b); err == nil && (string(p) != "secret" || len(b) != len(good)) {
			t.Fatalf("opened %x into %q", b, p)
		}
	})
}
