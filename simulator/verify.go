package simulator

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
)

// memo is a map the simulated devices of one process share, emptied when
// it reaches limit entries (a fleet has a handful of roots and chains).
type memo[V any] struct {
	mu    sync.Mutex
	limit int
	m     map[string]V
}

func newMemo[V any](limit int) *memo[V] { return &memo[V]{limit: limit, m: map[string]V{}} }

func (c *memo[V]) get(k string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

func (c *memo[V]) put(k string, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.limit {
		clear(c.m)
	}
	c.m[k] = v
}

// verifiedChains remembers certificate chains that were fully verified
// against the flashed root, so that a fleet of simulated devices on one
// machine does not repeat the same ECDSA verifications for every device. A
// chain is only ever trusted after a complete x509 verification of exactly
// those bytes; a different server certificate or intermediate is verified
// again. Each device still checks that its own issued leaf is signed by the
// (cached) intermediate.
var verifiedChains = newMemo[bool](1024)

// chainKey names a verification: which trust anchor (the flashed root's
// bytes), for what purpose and host, of exactly which chain.
func chainKey(root []byte, kind string, host string, raw [][]byte) string {
	h := sha256.New()
	h.Write(root)
	h.Write([]byte{0})
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(host))
	for _, c := range raw {
		h.Write([]byte{0})
		h.Write(c)
	}
	return string(h.Sum(nil))
}

// verifyServer is the server-certificate check of every session (DTLS, and
// TLS for MQTT and HTTPS): the chain must verify to the flashed root for
// host, with serverAuth usage.
func verifyServer(root []byte, roots *x509.CertPool, host string, raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("server sent no certificate")
	}
	k := chainKey(root, "server", host, raw)
	if _, ok := verifiedChains.get(k); ok {
		return nil
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return fmt.Errorf("server certificate: %w", err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	verifiedChains.put(k, true)
	return nil
}

// verifyIssued checks an issued chain (leaf first) against the flashed root:
// the intermediates fully once per distinct chain, the leaf's signature every time.
func verifyIssued(root []byte, roots *x509.CertPool, chain []*x509.Certificate) error {
	if len(chain) < 2 {
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	raw := make([][]byte, 0, len(chain)-1)
	for _, c := range chain[1:] {
		raw = append(raw, c.Raw)
	}
	k := chainKey(root, "issuer", "", raw)
	if _, ok := verifiedChains.get(k); !ok {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return err
		}
		verifiedChains.put(k, true)
		return nil
	}
	if err := chain[0].CheckSignatureFrom(chain[1]); err != nil {
		return err
	}
	for _, u := range chain[0].ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth {
			return nil
		}
	}
	return errors.New("issued certificate lacks clientAuth usage")
}

// What every simulated device of a fleet would otherwise parse for itself:
// the flashed root's pool (a device parses it once, at boot, not per
// enrollment), and the CA certificates an answer carries beside the
// device's own leaf. Parsed certificates and pools are only read once
// made, so devices share them; a leaf is always parsed afresh.
var (
	rootPools = newMemo[*x509.CertPool](64)
	caCerts   = newMemo[*x509.Certificate](256)
)

// rootPool is the pool of the PEM root certificates of a bundle.
func rootPool(pem string) (*x509.CertPool, error) {
	if p, ok := rootPools.get(pem); ok {
		return p, nil
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pem)) {
		return nil, errors.New("root_ca holds no PEM certificate")
	}
	rootPools.put(pem, p)
	return p, nil
}

// parseCA parses a CA certificate of an answer, once per distinct DER.
func parseCA(der []byte) (*x509.Certificate, error) {
	if c, ok := caCerts.get(string(der)); ok {
		return c, nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	caCerts.put(string(der), c)
	return c, nil
}
