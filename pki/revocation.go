package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Revoked is one entry of the revocation list.
type Revoked struct {
	Serial    *big.Int
	RevokedAt time.Time
}

// CRLValidity is how long a CRL is valid; provisiond reissues it at every
// revocation and at least every half of this.
const CRLValidity = 24 * time.Hour

// CRL returns a DER certificate revocation list signed by the intermediate.
// number must grow with every new list.
func (ca *CA) CRL(entries []Revoked, number int64, now time.Time) ([]byte, error) {
	tpl := &x509.RevocationList{
		Number:     big.NewInt(number),
		ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(CRLValidity),
	}
	for _, e := range entries {
		tpl.RevokedCertificateEntries = append(tpl.RevokedCertificateEntries,
			x509.RevocationListEntry{SerialNumber: e.Serial, RevocationTime: e.RevokedAt})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tpl, ca.intermediate, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("create CRL: %w", err)
	}
	return der, nil
}

// Status is what an OCSP lookup found for a serial.
type Status struct {
	Known     bool // issued by this CA
	Revoked   bool
	RevokedAt time.Time
}

// ErrOCSPRequest is returned for an OCSP request that does not parse or is
// not about this CA's certificates.
var ErrOCSPRequest = errors.New("bad OCSP request")

// OCSP answers a DER OCSP request. lookup tells the status of a serial. The
// response is signed by the intermediate (the issuer itself, RFC 6960 4.2.2.2).
func (ca *CA) OCSP(der []byte, lookup func(serial *big.Int) (Status, error), now time.Time) ([]byte, error) {
	req, err := ocsp.ParseRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOCSPRequest, err)
	}
	// The request names the issuer by hashes of its name and key.
	h := req.HashAlgorithm.New()
	h.Write(ca.intermediate.RawSubject)
	nameHash := h.Sum(nil)
	if string(nameHash) != string(req.IssuerNameHash) {
		return ocsp.UnauthorizedErrorResponse, nil
	}
	st, err := lookup(req.SerialNumber)
	if err != nil {
		return nil, err
	}
	rs, err := ca.ocspResponder(now)
	if err != nil {
		return nil, err
	}
	tpl := ocsp.Response{
		// The signer, in the response: OpenSSL (and so FreeRADIUS) looks
		// for it there; Go's client checks that the issuer signed it.
		Certificate:  rs.cert,
		SerialNumber: req.SerialNumber,
		ThisUpdate:   now.Add(-time.Minute),
		NextUpdate:   now.Add(time.Hour),
		Status:       ocsp.Good,
	}
	switch {
	case !st.Known:
		tpl.Status = ocsp.Unknown
	case st.Revoked:
		tpl.Status, tpl.RevokedAt, tpl.RevocationReason = ocsp.Revoked, st.RevokedAt, ocsp.Unspecified
	}
	nonce, ok := requestNonce(der)
	if !ok {
		return ocsp.CreateResponse(ca.intermediate, rs.cert, tpl, rs.key)
	}
	return ca.responseWithNonce(req, tpl, rs, nonce, now)
}

// ocspResponder is a delegated OCSP signer (RFC 6960 §4.2.2.2): a key of
// this process and a certificate from the intermediate for it, with the
// OCSPSigning usage and id-pkix-ocsp-nocheck. OCSP answers are signed with
// it and carry it, which both Go's client (it checks the issuer signed the
// embedded certificate) and OpenSSL's (it looks for the signer among the
// response's certificates) accept. Each replica makes its own; it lasts a
// week and is renewed a day before it ends.
type ocspResponder struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

var oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}

func (ca *CA) ocspResponder(now time.Time) (*ocspResponder, error) {
	ca.responderMu.Lock()
	defer ca.responderMu.Unlock()
	if r := ca.responder; r != nil && now.Before(r.cert.NotAfter.Add(-24*time.Hour)) {
		return r, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: ca.intermediate.Subject.CommonName + " OCSP responder"},
		NotBefore:       now.Add(-5 * time.Minute),
		NotAfter:        now.Add(7 * 24 * time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
		ExtraExtensions: []pkix.Extension{{Id: oidOCSPNoCheck, Value: []byte{0x05, 0x00}}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.intermediate, &key.PublicKey, ca.signer)
	if err != nil {
		return nil, fmt.Errorf("OCSP responder certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	ca.responder = &ocspResponder{key: key, cert: cert}
	return ca.responder, nil
}

// The OCSP response structures (RFC 6960 §4.2.1), with the
// responseExtensions that x/crypto/ocsp cannot write: it puts its extra
// extensions in the single response, where a nonce does not belong.
type (
	ocspCertID struct {
		HashAlgorithm pkix.AlgorithmIdentifier
		NameHash      []byte
		IssuerKeyHash []byte
		SerialNumber  *big.Int
	}
	ocspRevokedInfo struct {
		RevocationTime time.Time       `asn1:"generalized"`
		Reason         asn1.Enumerated `asn1:"explicit,tag:0,optional"`
	}
	ocspSingleResponse struct {
		CertID     ocspCertID
		Good       asn1.Flag       `asn1:"tag:0,optional"`
		Revoked    ocspRevokedInfo `asn1:"tag:1,optional"`
		Unknown    asn1.Flag       `asn1:"tag:2,optional"`
		ThisUpdate time.Time       `asn1:"generalized"`
		NextUpdate time.Time       `asn1:"generalized,explicit,tag:0,optional"`
	}
	ocspResponseData struct {
		Version     int `asn1:"optional,default:0,explicit,tag:0"`
		ResponderID asn1.RawValue
		ProducedAt  time.Time `asn1:"generalized"`
		Responses   []ocspSingleResponse
		Extensions  []pkix.Extension `asn1:"explicit,tag:1,optional"`
	}
	ocspBasicResponse struct {
		TBSResponseData    asn1.RawValue
		SignatureAlgorithm pkix.AlgorithmIdentifier
		Signature          asn1.BitString
		Certificates       []asn1.RawValue `asn1:"explicit,tag:0,optional"`
	}
	ocspResponseBytes struct {
		ResponseType asn1.ObjectIdentifier
		Response     []byte
	}
	ocspResponse struct {
		Status   asn1.Enumerated
		Response ocspResponseBytes `asn1:"explicit,tag:0"`
	}
)

var (
	oidOCSPBasic   = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 1}
	oidECDSASHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidHashSHA1    = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidHashSHA256  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidHashSHA384  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidHashSHA512  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
)

// responseWithNonce signs a response to req that echoes the request's nonce
// in its responseExtensions and names the certificate with the request's
// own CertID (its hash algorithm), signed by the delegated responder
// (ECDSA P-256 with SHA-256).
func (ca *CA) responseWithNonce(req *ocsp.Request, tpl ocsp.Response, rs *ocspResponder, nonce []byte, now time.Time) ([]byte, error) {
	hashOID := map[crypto.Hash]asn1.ObjectIdentifier{crypto.SHA1: oidHashSHA1, crypto.SHA256: oidHashSHA256,
		crypto.SHA384: oidHashSHA384, crypto.SHA512: oidHashSHA512}[req.HashAlgorithm]
	if hashOID == nil {
		return ocsp.CreateResponse(ca.intermediate, rs.cert, tpl, rs.key)
	}
	single := ocspSingleResponse{
		CertID: ocspCertID{HashAlgorithm: pkix.AlgorithmIdentifier{Algorithm: hashOID, Parameters: asn1.RawValue{Tag: asn1.TagNull}},
			NameHash: req.IssuerNameHash, IssuerKeyHash: req.IssuerKeyHash, SerialNumber: req.SerialNumber},
		ThisUpdate: tpl.ThisUpdate.UTC(), NextUpdate: tpl.NextUpdate.UTC(),
	}
	switch tpl.Status {
	case ocsp.Good:
		single.Good = true
	case ocsp.Unknown:
		single.Unknown = true
	case ocsp.Revoked:
		single.Revoked = ocspRevokedInfo{RevocationTime: tpl.RevokedAt.UTC(), Reason: asn1.Enumerated(tpl.RevocationReason)}
	}
	tbs, err := asn1.Marshal(ocspResponseData{
		ResponderID: asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 1, IsCompound: true, Bytes: rs.cert.RawSubject},
		ProducedAt:  now.UTC().Truncate(time.Second),
		Responses:   []ocspSingleResponse{single},
		Extensions:  []pkix.Extension{{Id: oidOCSPNonce, Value: nonce}},
	})
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := rs.key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign OCSP response: %w", err)
	}
	basic, err := asn1.Marshal(ocspBasicResponse{TBSResponseData: asn1.RawValue{FullBytes: tbs},
		SignatureAlgorithm: pkix.AlgorithmIdentifier{Algorithm: oidECDSASHA256},
		Signature:          asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
		Certificates:       []asn1.RawValue{{FullBytes: rs.cert.Raw}}})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(ocspResponse{Status: 0, Response: ocspResponseBytes{ResponseType: oidOCSPBasic, Response: basic}})
}

// oidOCSPNonce is id-pkix-ocsp-nonce (RFC 8954).
var oidOCSPNonce = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}

// requestNonce is the nonce extension's value of an OCSP request, which the
// response must echo (RFC 8954 §2.1): clients that send one (OpenSSL,
// FreeRADIUS with use_nonce) refuse a response without it. Parsed here
// because x/crypto/ocsp drops request extensions; at most 128 bytes.
func requestNonce(der []byte) ([]byte, bool) {
	var req struct {
		TBS struct {
			Version   int           `asn1:"explicit,tag:0,default:0,optional"`
			Requestor asn1.RawValue `asn1:"explicit,tag:1,optional"`
			List      []asn1.RawValue
			Ext       []pkix.Extension `asn1:"explicit,tag:2,optional"`
		}
		Sig asn1.RawValue `asn1:"explicit,tag:0,optional"`
	}
	if _, err := asn1.Unmarshal(der, &req); err != nil {
		return nil, false
	}
	for _, e := range req.TBS.Ext {
		if e.Id.Equal(oidOCSPNonce) && len(e.Value) > 0 && len(e.Value) <= 128 {
			return e.Value, true
		}
	}
	return nil, false
}
