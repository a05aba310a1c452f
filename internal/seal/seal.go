// Package seal authenticates, and where needed encrypts, the values the
// workers keep in JetStream key-value buckets. Anyone who can write a
// bucket (a NATS client with the rights, a leaked credential, an
// operator's tool) could otherwise hand a worker a forged answer or a
// rate-limit state that stops every login, so a worker trusts only what
// carries a tag made with a key no NATS client holds.
//
// # Keys
//
// Every app has its own keys, derived with HKDF-SHA256 from a secret only
// the workers hold: WX_STORE_KEY (at least 32 bytes) when it is set, or
// else the app's AppSecret. From that secret each purpose gets a sub-key
// of its own (answers, rate-limit state, session keys), so that a value
// made for one purpose never passes as another, and one app's values
// never pass as another app's.
//
// # Formats
//
// A MAC'd value is a version byte, a 32-byte HMAC-SHA256 tag and the value.
// The tag covers the version, the bucket's name, the value's key and the
// value, each length-prefixed: a valid value copied to another key or
// bucket (user A's answer onto the key of user B's code) fails the check.
// Tags are compared in constant time.
//
// An encrypted value is a version byte, a 12-byte random nonce and the
// AES-256-GCM ciphertext with its tag; the version, bucket and key are its
// associated data, so it too is bound to where it was written.
//
// # Rotation
//
// Changing WX_STORE_KEY, or an AppSecret while WX_STORE_KEY is unset,
// changes the keys. Values written under the old keys then fail the check
// and count as absent (and as rejected in wxlogin_store_rejected_total):
//   - answers kept for retries are lost, so a code retried across the
//     change is exchanged again and gets WeChat's code_used;
//   - the rate limiter's short-lived state resets: the pool starts again
//     from the full WX_RATE, and its claimed blocks are unaffected (their
//     existence, not their value, is what counts);
//   - encrypted values (session keys) can no longer be read.
//
// Every worker of a pool must therefore hold the same WX_STORE_KEY (or the
// same AppSecrets); during a rolling change, workers on the old and the
// new key reject each other's values until the change completes, which
// costs retries their stored answers and nothing else. Nothing needs to be
// cleaned up afterwards: old values expire with their bucket's TTL.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
)

// MinStoreKey is the least length of WX_STORE_KEY in bytes.
const MinStoreKey = 32

// Purpose names what a sub-key is for; each purpose has its own key.
type Purpose string

// The purposes.
const (
	Answers   Purpose = "answers"    // dedup's stored answers and claims
	RateLimit Purpose = "ratelimit"  // the rate limiter's effective rate
	Sessions  Purpose = "sessionkey" // session keys, encrypted at rest
)

// Version bytes: the first byte of every stored value, so that a later
// format can be told apart.
const (
	versionMAC  byte = 1
	versionAEAD byte = 2
)

// ErrInvalid is what Verify and Open return for anything that is not a
// value sealed under this key for this bucket and key.
var ErrInvalid = errors.New("stored value failed its authenticity check")

// Keys are one app's sub-keys.
type Keys struct {
	Answers   *MAC
	RateLimit *MAC
	Sessions  *AEAD
}

// Derive returns the keys of app appid: from storeKey when it is set
// (WX_STORE_KEY), else from the app's secret.
func Derive(storeKey []byte, appid, appSecret string) (Keys, error) {
	secret, source := storeKey, "store-key"
	if len(secret) == 0 {
		secret, source = []byte(appSecret), "app-secret"
	}
	if len(secret) == 0 {
		return Keys{}, errors.New("seal: no secret to derive keys from")
	}
	sub := func(p Purpose) ([]byte, error) {
		// The info names the source too: the same bytes given once as
		// WX_STORE_KEY and once as an AppSecret still make distinct keys.
		k, err := hkdf.Key(sha256.New, secret, nil, "wxlogin seal v1\x00"+source+"\x00"+string(p)+"\x00"+appid, 32)
		if err != nil {
			return nil, fmt.Errorf("seal: deriving the %s key: %w", p, err)
		}
		return k, nil
	}
	var ks Keys
	var errs []error
	if k, err := sub(Answers); err == nil {
		ks.Answers = NewMAC(k)
	} else {
		errs = append(errs, err)
	}
	if k, err := sub(RateLimit); err == nil {
		ks.RateLimit = NewMAC(k)
	} else {
		errs = append(errs, err)
	}
	if k, err := sub(Sessions); err == nil {
		ks.Sessions, err = NewAEAD(k)
		errs = append(errs, err)
	} else {
		errs = append(errs, err)
	}
	return ks, errors.Join(errs...)
}

// MAC tags values with HMAC-SHA256 under one key.
type MAC struct {
	// HMAC states for reuse: setting one up hashes the key twice, as much
	// work as tagging a whole answer.
	states sync.Pool // of hash.Hash
}

// NewMAC returns a MAC under key (32 bytes from Derive; tests may pass
// any).
func NewMAC(key []byte) *MAC {
	key = append([]byte(nil), key...)
	m := &MAC{}
	m.states.New = func() any { return hmac.New(sha256.New, key) }
	return m
}

// TagSize is the length of a MAC's tag.
const TagSize = sha256.Size

// Sign returns value sealed for (bucket, key): version, tag, value.
func (m *MAC) Sign(bucket, key string, value []byte) []byte {
	out := make([]byte, 1+TagSize, 1+TagSize+len(value))
	out[0] = versionMAC
	m.tag(out[1:1], bucket, key, value)
	return append(out, value...)
}

// Verify returns the value inside stored if stored was signed under this
// key for (bucket, key), else ErrInvalid. The value shares stored's
// memory.
func (m *MAC) Verify(bucket, key string, stored []byte) ([]byte, error) {
	if len(stored) < 1+TagSize || stored[0] != versionMAC {
		return nil, ErrInvalid
	}
	value := stored[1+TagSize:]
	var sum [TagSize]byte
	if !hmac.Equal(m.tag(sum[:0], bucket, key, value), stored[1:1+TagSize]) {
		return nil, ErrInvalid
	}
	return value, nil
}

func (m *MAC) tag(dst []byte, bucket, key string, value []byte) []byte {
	h := m.states.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte{versionMAC})
	writeField(h, []byte(bucket))
	writeField(h, []byte(key))
	writeField(h, value)
	dst = h.Sum(dst)
	m.states.Put(h)
	return dst
}

// writeField writes b length-prefixed, so that no two (bucket, key,
// value) triples run together into the same bytes.
func writeField(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}

// AEAD encrypts values with AES-256-GCM, bound to their bucket and key.
type AEAD struct {
	gcm cipher.AEAD
}

// NewAEAD returns an AEAD under a 32-byte key.
func NewAEAD(key []byte) (*AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("seal: an AEAD key has 32 bytes, not %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &AEAD{gcm: gcm}, nil
}

// Seal encrypts plaintext for (bucket, key): version, nonce, ciphertext.
// Nonces are random: 2^32 values under one key keep the chance of a
// repeat negligible, and each app's key sees far fewer than that within
// the lifetime of what it stores.
func (a *AEAD) Seal(bucket, key string, plaintext []byte) []byte {
	ns := a.gcm.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plaintext)+a.gcm.Overhead())
	out[0] = versionAEAD
	rand.Read(out[1 : 1+ns]) // never fails (crypto/rand's contract)
	return a.gcm.Seal(out, out[1:1+ns], plaintext, ad(bucket, key))
}

// Open decrypts what Seal made for (bucket, key), or returns ErrInvalid.
func (a *AEAD) Open(bucket, key string, sealed []byte) ([]byte, error) {
	ns := a.gcm.NonceSize()
	if len(sealed) < 1+ns+a.gcm.Overhead() || sealed[0] != versionAEAD {
		return nil, ErrInvalid
	}
	plain, err := a.gcm.Open(nil, sealed[1:1+ns], sealed[1+ns:], ad(bucket, key))
	if err != nil {
		return nil, ErrInvalid
	}
	return plain, nil
}

// ad is an encrypted value's associated data: version, bucket and key,
// length-prefixed.
func ad(bucket, key string) []byte {
	b := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(bucket)+len(key))
	b = append(b, versionAEAD)
	b = binary.AppendUvarint(b, uint64(len(bucket)))
	b = append(b, bucket...)
	b = binary.AppendUvarint(b, uint64(len(key)))
	return append(b, key...)
}
