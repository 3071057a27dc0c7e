package simulator

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/wire"
)

// TestBuildCSR: the device's own CSR has the very bytes x509 would sign
// for the same subject and key, a signature that verifies, and parses as
// Go's does; keys other than P-256 still get a CSR, from x509.
func TestBuildCSR(t *testing.T) {
	p256, err1 := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, err2 := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, err3 := ed25519.GenerateKey(rand.Reader)
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string]crypto.Signer{"P-256": p256, "P-384": p384, "Ed25519": ed} {
		t.Run(name, func(t *testing.T) {
			der, err := buildCSR("SN-0001", key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := x509.ParseCertificateRequest(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := got.CheckSignature(); err != nil {
				t.Fatalf("signature: %v", err)
			}
			ref, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}}, key)
			if err != nil {
				t.Fatal(err)
			}
			want, err := x509.ParseCertificateRequest(ref)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificateRequest, want.RawTBSCertificateRequest) {
				t.Errorf("signed part differs from x509's:\n got %x\nwant %x", got.RawTBSCertificateRequest, want.RawTBSCertificateRequest)
			}
			if got.SignatureAlgorithm != want.SignatureAlgorithm || got.Subject.CommonName != "SN-0001" {
				t.Errorf("algorithm %v, subject %q; want %v, SN-0001", got.SignatureAlgorithm, got.Subject.CommonName, want.SignatureAlgorithm)
			}
			// A broken signature is caught by the server's check.
			der[len(der)-3] ^= 0x55
			if bad, err := x509.ParseCertificateRequest(der); err == nil && bad.CheckSignature() == nil {
				t.Error("a CSR with a flipped signature byte still verifies")
			}
		})
	}
}

// TestSharedParsing: devices of one fleet share their root's pool and the
// answer's CA certificates, parsed once; a bad root or certificate is
// still refused.
func TestSharedParsing(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	root := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	a, err := NewDevice(wire.Bundle{Serial: "A", RootCA: root})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewDevice(wire.Bundle{Serial: "B", RootCA: root})
	if err != nil {
		t.Fatal(err)
	}
	if a.roots != b.roots || a.Key == b.Key {
		t.Errorf("devices of one root: pools shared %v, keys shared %v; want the pool shared, not the key", a.roots == b.roots, a.Key == b.Key)
	}
	if _, err := NewDevice(wire.Bundle{Serial: "C", RootCA: "not a certificate"}); err == nil || !strings.Contains(err.Error(), "root_ca") {
		t.Errorf("a bundle without a root: %v", err)
	}
	c1, err1 := parseCA(der)
	c2, err2 := parseCA(bytes.Clone(der))
	if err1 != nil || err2 != nil || c1 != c2 || c1.Subject.CommonName != "root" {
		t.Errorf("parseCA: %v %v, same certificate %v", err1, err2, c1 == c2)
	}
	if _, err := parseCA(der[:len(der)-10]); err == nil {
		t.Error("parseCA took a truncated certificate")
	}
}
