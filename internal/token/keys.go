// Package token holds wxlogin's login tokens: the Ed25519 keys that sign
// them, minting a compact JWS (EdDSA) for an exchanged openid, the public
// keys as a JWKS document, and verifying a token offline. The JOSE work
// itself is github.com/go-jose/go-jose/v4's; this package only decides
// which claims go in and which tokens are refused.
package token

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/go-jose/go-jose/v4"
)

// Key is one Ed25519 signing key and its key id, the RFC 7638 thumbprint
// of its public half: stable across restarts and the same on every
// worker that holds the key, with no name to configure.
type Key struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	kid  string
}

// KID is the key's id, as it appears in tokens' headers and the JWKS.
func (k Key) KID() string { return k.kid }

// Public is the key's public half.
func (k Key) Public() ed25519.PublicKey { return k.pub }

// NewKey wraps an Ed25519 private key.
func NewKey(priv ed25519.PrivateKey) (Key, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return Key{}, errors.New("not an Ed25519 private key")
	}
	pub := priv.Public().(ed25519.PublicKey)
	kid, err := thumbprint(pub)
	if err != nil {
		return Key{}, err
	}
	return Key{priv: priv, pub: pub, kid: kid}, nil
}

func thumbprint(pub ed25519.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	sum, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// GenerateKey makes a fresh Ed25519 key.
func GenerateKey() (Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generating an Ed25519 key: %w", err)
	}
	return NewKey(priv)
}

// ParseKeys reads PEM data holding one or more PKCS#8 "PRIVATE KEY"
// blocks of Ed25519 keys, in order: the first signs. Errors name the
// block by position and never quote the data, which is a secret.
func ParseKeys(data []byte) ([]Key, error) {
	var keys []Key
	seen := map[string]bool{}
	rest := data
	for n := 1; ; n++ {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("PEM block %d is not a PKCS#8 PRIVATE KEY", n)
		}
		parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d does not parse as PKCS#8", n)
		}
		priv, ok := parsed.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("PEM block %d is not an Ed25519 key", n)
		}
		k, err := NewKey(priv)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		if seen[k.kid] {
			return nil, fmt.Errorf("PEM block %d repeats an earlier key", n)
		}
		seen[k.kid] = true
		keys = append(keys, k)
	}
	// pem.Decode stops at the first block it cannot read; a cut or
	// mangled one must not pass for the end of the file.
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, fmt.Errorf("PEM block %d is malformed", len(keys)+1)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	return keys, nil
}

// LoadFile reads WX_TOKEN_KEY_FILE (see ParseKeys).
func LoadFile(path string) ([]Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("WX_TOKEN_KEY_FILE: %w", err)
	}
	keys, err := ParseKeys(data)
	if err != nil {
		return nil, fmt.Errorf("WX_TOKEN_KEY_FILE: %s: %w", path, err)
	}
	return keys, nil
}

// EncodePEM writes keys as PKCS#8 PEM blocks, the format LoadFile reads.
func EncodePEM(keys ...Key) ([]byte, error) {
	var buf bytes.Buffer
	for _, k := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(k.priv)
		if err != nil {
			return nil, fmt.Errorf("encoding a key as PKCS#8: %w", err)
		}
		if err := pem.Encode(&buf, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// StoredKeyFile is the name of the generated key kept in a store
// directory (the all-in-one's NATS_STORE_DIR).
const StoredKeyFile = "wxlogin-token-key.pem"

// LoadOrCreate returns the keys kept in dir, generating one there first
// if there is none, so that tokens outlive a restart. The file is made
// with mode 0600 and never overwritten.
func LoadOrCreate(dir string) (keys []Key, created bool, err error) {
	path := filepath.Join(dir, StoredKeyFile)
	data, err := os.ReadFile(path)
	if err == nil {
		keys, err := ParseKeys(data)
		if err != nil {
			return nil, false, fmt.Errorf("token key %s: %w", path, err)
		}
		return keys, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("token key: %w", err)
	}
	k, err := GenerateKey()
	if err != nil {
		return nil, false, err
	}
	data, err = EncodePEM(k)
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("token key dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("token key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return nil, false, fmt.Errorf("writing token key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, false, fmt.Errorf("writing token key %s: %w", path, err)
	}
	return []Key{k}, true, nil
}
