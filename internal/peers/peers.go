// Package peers verifies the client certificates that provisiond's
// listeners (DTLS, MQTT over TLS, HTTPS) take at the handshake: a device's,
// from provisiond's CA, or a factory certificate (IDevID) from a registered
// manufacturer CA. The listeners take any certificate whose key the client
// proved it holds and verify it here; Verdicts carries what was found from
// the handshake callback to the session it opens.
package peers

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Parse parses the raw certificates a client presented, leaf first.
func Parse(raw [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, 0, len(raw))
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// Verify is crypto/tls's check of a client certificate: certs (leaf first,
// the rest intermediates) chain to roots for client authentication. It
// returns the chains, or nil when the certificate does not verify.
func Verify(certs []*x509.Certificate, roots *x509.CertPool) [][]*x509.Certificate {
	if len(certs) == 0 || roots == nil {
		return nil
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	// A device's certificate is issued by provisiond's intermediate, which
	// the device pool trusts directly. Checked against the pool alone, the
	// leaf's signature is verified once. With the intermediate the device
	// presents among the intermediates, x509 also builds the chain through
	// that copy to the root: the leaf's signature verified again, and the
	// intermediate's, three verifications where one gives the same answer.
	// What this finds, the full check below finds too.
	if len(certs) > 1 {
		if chains, err := certs[0].Verify(opts); err == nil {
			return chains
		}
	}
	opts.Intermediates = x509.NewCertPool()
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := certs[0].Verify(opts)
	if err != nil {
		return nil
	}
	return chains
}

// Verdicts carries what a handshake's certificate check found to the session
// the handshake opens, keyed by the leaf certificate: neither pion's DTLS
// nor crypto/tls passes a value of ours from one to the other. An entry
// lives until its session takes it; those of handshakes that failed after
// the check are dropped after a minute. The zero value is ready.
type Verdicts struct {
	mu sync.Mutex
	m  map[string][]verdict // one per handshake: a device may open two sessions at once
}

type verdict struct {
	v  any
	at time.Time
}

// Put records what the check of leaf found.
func (v *Verdicts) Put(leaf []byte, x any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	if v.m == nil {
		v.m = map[string][]verdict{}
	}
	if len(v.m) >= 1024 {
		for k, es := range v.m {
			if now.Sub(es[len(es)-1].at) > time.Minute {
				delete(v.m, k)
			}
		}
	}
	v.m[string(leaf)] = append(v.m[string(leaf)], verdict{v: x, at: now})
}

// Peek returns the oldest verdict on leaf without forgetting it, nil when none.
func (v *Verdicts) Peek(leaf []byte) any {
	v.mu.Lock()
	defer v.mu.Unlock()
	if es := v.m[string(leaf)]; len(es) > 0 {
		return es[0].v
	}
	return nil
}

// Take returns (and forgets) the oldest verdict on leaf, nil when none.
func (v *Verdicts) Take(leaf []byte) any {
	v.mu.Lock()
	defer v.mu.Unlock()
	es := v.m[string(leaf)]
	if len(es) == 0 {
		return nil
	}
	if len(es) == 1 {
		delete(v.m, string(leaf))
	} else {
		v.m[string(leaf)] = es[1:]
	}
	return es[0].v
}

// Kind is what a presented client certificate is.
type Kind int

// Kinds of client certificate.
const (
	None    Kind = iota // no certificate: a bootstrap session
	Device              // one that chains to provisiond's CA
	Factory             // a factory certificate under a registered manufacturer CA
)

// Classify parses raw (leaf first) and says what it is: a device's when it
// chains to roots, else a factory certificate when factory accepts it (nil
// factory accepts none). An error means the handshake must fail; its Kind
// is Factory when factory refused the certificate, so that the caller can
// say so.
func Classify(ctx context.Context, raw [][]byte, roots *x509.CertPool, factory func(context.Context, []*x509.Certificate) error) ([]*x509.Certificate, Kind, error) {
	if len(raw) == 0 {
		return nil, None, nil
	}
	certs, err := Parse(raw)
	if err != nil {
		return nil, None, fmt.Errorf("client certificate: %w", err)
	}
	if Verify(certs, roots) != nil {
		return certs, Device, nil
	}
	if factory == nil {
		return certs, None, errors.New("client certificate is not from provisiond's CA")
	}
	if err := factory(ctx, certs); err != nil {
		return certs, Factory, err
	}
	return certs, Factory, nil
}
