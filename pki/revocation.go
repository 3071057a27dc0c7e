package pki

import (
	"crypto/rand"
	"crypto/x509"
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
	tpl := ocsp.Response{
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
	return ocsp.CreateResponse(ca.intermediate, ca.intermediate, tpl, ca.signer)
}
