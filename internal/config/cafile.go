package config

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
)

// ReadRoots reads WX_CA_FILE: a PEM bundle of the certificates to trust
// instead of the system's, as a TLS-intercepting egress proxy or a private
// gateway in front of WeChat needs. Text between the blocks (a bundle's
// comments) is skipped; any other block, or one that does not parse, stops
// the program at start. Errors name the block by position and never quote
// the file, which might be a key put there by mistake.
func ReadRoots(path string) (*x509.CertPool, error) {
	rest, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("WX_CA_FILE: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		n++
		if block.Type != "CERTIFICATE" {
			what := "not a CERTIFICATE"
			if strings.Contains(block.Type, "PRIVATE KEY") {
				what = "a private key: give certificates only, and keep the key elsewhere"
			}
			return nil, fmt.Errorf("WX_CA_FILE: %s: PEM block %d is %s", path, n, what)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("WX_CA_FILE: %s: certificate %d does not parse", path, n)
		}
		pool.AddCert(cert)
	}
	// pem.Decode stops at the first block it cannot read; a cut or
	// mangled one must not pass for the end of the bundle.
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, fmt.Errorf("WX_CA_FILE: %s: PEM block %d is malformed", path, n+1)
	}
	if n == 0 {
		return nil, fmt.Errorf("WX_CA_FILE: %s holds no PEM certificate", path)
	}
	return pool, nil
}
