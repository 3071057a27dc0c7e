package peers_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/provisiond/provisiond/internal/peers"
	"github.com/provisiond/provisiond/pki/mfr"
)

// Two handshakes with one certificate (a device opening two sessions at
// once) leave two verdicts, taken in order, each once.
func TestVerdicts(t *testing.T) {
	var v peers.Verdicts
	leaf := []byte("leaf")
	v.Put(leaf, 1)
	v.Put(leaf, 2)
	v.Put([]byte("other"), 3)
	if a, b, c := v.Take(leaf), v.Take(leaf), v.Take(leaf); a != 1 || b != 2 || c != nil {
		t.Fatalf("took %v %v %v, want 1 2 nil", a, b, c)
	}
	if got := v.Take([]byte("other")); got != 3 {
		t.Fatalf("other: %v", got)
	}
}

// Verify accepts a chain to the roots for client authentication and
// nothing else.
func TestVerify(t *testing.T) {
	root, _ := mfr.New("Root")
	inter, _ := root.Intermediate("Inter")
	leaf, err := inter.Issue("S-1", mfr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root.Cert)
	if peers.Verify([]*x509.Certificate{leaf.Cert, inter.Cert}, roots) == nil {
		t.Error("a chain through its intermediate did not verify")
	}
	if peers.Verify([]*x509.Certificate{leaf.Cert}, roots) != nil {
		t.Error("verified without the intermediate")
	}
	other, _ := mfr.New("Other")
	pool := x509.NewCertPool()
	pool.AddCert(other.Cert)
	if peers.Verify([]*x509.Certificate{leaf.Cert, inter.Cert}, pool) != nil || peers.Verify(nil, roots) != nil {
		t.Error("verified against another root, or nothing")
	}
	if _, err := peers.Parse([][]byte{leaf.Cert.Raw, []byte("junk")}); err == nil {
		t.Error("parsed junk")
	}
}

// Classify tells a device's certificate from a factory certificate, and
// refuses what is neither.
func TestClassify(t *testing.T) {
	ctx := context.Background()
	own, _ := mfr.New("provisiond")
	dev, _ := own.Issue("D-1", mfr.Options{})
	maker, _ := mfr.New("Maker")
	idev, _ := maker.Issue("S-1", mfr.Options{})
	roots := x509.NewCertPool()
	roots.AddCert(own.Cert)
	factory := func(_ context.Context, c []*x509.Certificate) error {
		if c[0].CheckSignatureFrom(maker.Cert) != nil {
			return errors.New("not a maker's")
		}
		return nil
	}
	if _, k, err := peers.Classify(ctx, nil, roots, factory); k != peers.None || err != nil {
		t.Errorf("no certificate: %v %v", k, err)
	}
	if _, k, err := peers.Classify(ctx, [][]byte{dev.Cert.Raw}, roots, factory); k != peers.Device || err != nil {
		t.Errorf("device: %v %v", k, err)
	}
	if _, k, err := peers.Classify(ctx, [][]byte{idev.Cert.Raw}, roots, factory); k != peers.Factory || err != nil {
		t.Errorf("factory: %v %v", k, err)
	}
	stranger, _ := mfr.New("Stranger")
	s, _ := stranger.Issue("X-1", mfr.Options{})
	if _, k, err := peers.Classify(ctx, [][]byte{s.Cert.Raw}, roots, factory); k != peers.Factory || err == nil {
		t.Errorf("refused by the factory check: %v %v", k, err)
	}
	if _, _, err := peers.Classify(ctx, [][]byte{idev.Cert.Raw}, roots, nil); err == nil {
		t.Error("a factory certificate with no factory check accepted")
	}
}

// provisiondPool is a device pool as provisiond builds it: its root and,
// trusted directly, its intermediate (devices that present only their
// leaf verify); dev is a device certificate the intermediate issued.
func provisiondPool(t testing.TB) (pool *x509.CertPool, dev, inter *x509.Certificate) {
	root, err := mfr.New("provisiond Root")
	if err != nil {
		t.Fatal(err)
	}
	in, err := root.Intermediate("provisiond Intermediate")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := in.Issue("D-1", mfr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(root.Cert)
	pool.AddCert(in.Cert)
	return pool, leaf.Cert, in.Cert
}

// A device presenting its leaf and provisiond's intermediate, or its leaf
// alone, verifies against a pool that trusts the intermediate directly.
func TestVerifyDirectlyTrustedIssuer(t *testing.T) {
	pool, dev, inter := provisiondPool(t)
	for _, certs := range [][]*x509.Certificate{{dev, inter}, {dev}} {
		if chains := peers.Verify(certs, pool); len(chains) == 0 || chains[0][0] != dev {
			t.Fatalf("%d certificates: chains %v", len(certs), chains)
		}
	}
	maker, _ := mfr.New("Maker")
	makerInter, _ := maker.Intermediate("Maker Intermediate")
	idev, _ := makerInter.Issue("S-1", mfr.Options{})
	if peers.Verify([]*x509.Certificate{idev.Cert, makerInter.Cert}, pool) != nil {
		t.Fatal("another maker's chain verified against provisiond's pool")
	}
}

// BenchmarkVerifyDevice is the check of a device's certificate at every
// mutual-TLS or DTLS session it opens (EST config reads, MQTT, renewals);
// factory is the same check refusing a factory certificate's chain, before
// the factory check takes it.
func BenchmarkVerifyDevice(b *testing.B) {
	pool, dev, inter := provisiondPool(b)
	b.Run("device", func(b *testing.B) {
		certs := []*x509.Certificate{dev, inter}
		for b.Loop() {
			if peers.Verify(certs, pool) == nil {
				b.Fatal("did not verify")
			}
		}
	})
	maker, _ := mfr.New("Maker")
	makerInter, _ := maker.Intermediate("Maker Intermediate")
	idev, _ := makerInter.Issue("S-1", mfr.Options{})
	b.Run("factory", func(b *testing.B) {
		certs := []*x509.Certificate{idev.Cert, makerInter.Cert}
		for b.Loop() {
			if peers.Verify(certs, pool) != nil {
				b.Fatal("verified")
			}
		}
	})
}
