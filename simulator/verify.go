package simulator

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
)

// chainCache remembers certificate chains that were fully verified against
// the flashed root, so that a fleet of simulated devices on one machine does
// not repeat the same ECDSA verifications for every device. A chain is only
// ever trusted after a complete x509 verification of exactly those bytes; a
// different server certificate or intermediate is verified again. Each
// device still checks that its own issued leaf is signed by the (cached)
// intermediate.
type chainCache struct {
	mu       sync.Mutex
	verified map[[32]byte]bool
}

var verifiedChains = &chainCache{verified: map[[32]byte]bool{}}

// chainKey names a verification: which trust anchor (the flashed root's
// bytes), for what purpose and host, of exactly which chain.
func chainKey(root []byte, kind string, host string, raw [][]byte) [32]byte {
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
	var k [32]byte
	copy(k[:], h.Sum(nil))
	return k
}

func (c *chainCache) seen(k [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.verified[k]
}

func (c *chainCache) add(k [32]byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.verified) > 1024 {
		clear(c.verified)
	}
	c.verified[k] = true
}

// verifyServer is the server-certificate check of every session (DTLS, and
// TLS for MQTT and HTTPS): the chain must verify to the flashed root for
// host, with serverAuth usage.
func verifyServer(root []byte, roots *x509.CertPool, host string, raw [][]byte) error {
	if len(raw) == 0 {
		return errors.New("server sent no certificate")
	}
	k := chainKey(root, "server", host, raw)
	if verifiedChains.seen(k) {
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
	verifiedChains.add(k)
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
	if !verifiedChains.seen(k) {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			return err
		}
		verifiedChains.add(k)
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

// shared holds what every simulated device of one fleet would otherwise
// parse for itself: the flashed root's pool (a device parses it once, at
// boot, not per enrollment) and the CA certificates an answer carries
// beside the device's own leaf. Parsed certificates and pools are only
// read once made, so devices share them; a leaf is always parsed afresh.
var shared = struct {
	mu    sync.Mutex
	pools map[string]*x509.CertPool
	certs map[string]*x509.Certificate
}{pools: map[string]*x509.CertPool{}, certs: map[string]*x509.Certificate{}}

// rootPool is the pool of the PEM root certificates of a bundle.
func rootPool(pem string) (*x509.CertPool, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if p, ok := shared.pools[pem]; ok {
		return p, nil
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM([]byte(pem)) {
		return nil, errors.New("root_ca holds no PEM certificate")
	}
	if len(shared.pools) > 64 {
		clear(shared.pools)
	}
	shared.pools[pem] = p
	return p, nil
}

// parseCA parses a CA certificate of an answer, once per distinct DER.
func parseCA(der []byte) (*x509.Certificate, error) {
	shared.mu.Lock()
	c, ok := shared.certs[string(der)]
	shared.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if len(shared.certs) > 256 {
		clear(shared.certs)
	}
	shared.certs[string(der)] = c
	return c, nil
}
