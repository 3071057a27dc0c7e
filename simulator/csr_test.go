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
	"testing"
)

// TestBuildCSR: the device's own CSR has the very bytes x509 would sign
// for the same subject and key, a signature that verifies, and parses as
// Go's does; keys other than P-256 still get a CSR, from x509.
func TestBuildCSR(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
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
			want, _ := x509.ParseCertificateRequest(ref)
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
