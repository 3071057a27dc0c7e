package simulator

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
)

// oidECDSAWithSHA256 is the CSR signature algorithm of a P-256 key.
var oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}

// csrInfo is PKCS #10's CertificationRequestInfo with no attributes.
type csrInfo struct {
	Version    int
	Subject    asn1.RawValue
	PublicKey  asn1.RawValue
	Attributes asn1.RawValue // [0] SET OF Attribute, empty
}

type csrDER struct {
	Info      asn1.RawValue
	Algorithm pkix.AlgorithmIdentifier
	Signature asn1.BitString
}

// buildCSR makes the PKCS #10 request a device stack such as mbedTLS's
// (mbedtls_x509write_csr_der) makes for a P-256 key: the subject, the
// key, one ECDSA-with-SHA-256 signature. x509.CreateCertificateRequest
// gives the same bytes to sign but then verifies its own signature, a
// second public-key operation no device does; the simulator's CPU per
// enrollment is measured against the server's (devsim --cpu). Other keys
// go through x509.
func buildCSR(cn string, key crypto.Signer) ([]byte, error) {
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	}
	subject, err := asn1.Marshal(pkix.Name{CommonName: cn}.ToRDNSequence())
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	if err != nil {
		return nil, err
	}
	info, err := asn1.Marshal(csrInfo{Subject: asn1.RawValue{FullBytes: subject}, PublicKey: asn1.RawValue{FullBytes: spki},
		Attributes: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: []byte{}}})
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(info)
	sig, err := ecdsa.SignASN1(rand.Reader, ec, digest[:])
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(csrDER{Info: asn1.RawValue{FullBytes: info}, Algorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSAWithSHA256},
		Signature: asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)}})
}
