// Package est serves Enrollment over Secure Transport: EST over HTTPS (RFC
// 7030 with RFC 8951's clarifications) at /.well-known/est/, and EST over
// CoAP and DTLS (RFC 9148, "EST-coaps") at /.well-known/est/ and /est on the
// DTLS listener. Both map their messages to the enroll workflows: a device
// authenticates with a factory certificate (IDevID), with HTTP Basic (its
// serial and claim token) or, to re-enroll, with the certificate provisiond
// issued it, and receives only certificates; its Wi-Fi, network config and
// lease come over its new mutual-TLS identity (the CoAP /config and MQTT
// topics, or GET /device/v1/config here).
package est

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/smallstep/pkcs7"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/enroll"
)

// Service is what EST needs of the enroll workflows.
type Service interface {
	Enroll(ctx context.Context, req enroll.Request) (enroll.Result, error)
	Renew(ctx context.Context, id uuid.UUID, presented string, csrDER []byte, source netip.AddrPort, transport string) (enroll.Result, error)
	Authorize(ctx context.Context, id uuid.UUID, certSerial string) error
	Config(ctx context.Context, id uuid.UUID) (enroll.DeviceConfig, error)
	RenewLease(ctx context.Context, id uuid.UUID, source netip.AddrPort, transport string) (enroll.DeviceConfig, error)
}

// Config is what both EST front ends are built on.
type Config struct {
	Service Service
	// CACerts are the certificates /cacerts returns: provisiond's
	// intermediate and root (the device needs both to build its chain).
	CACerts func() []*x509.Certificate
	// MaxBodyBytes bounds a request body (a base64 CSR); default 16 KiB.
	MaxBodyBytes int64
	Log          *slog.Logger
	// PSKSerial maps the PSK identity of an EST-coaps session (an LwM2M
	// bootstrap PSK, coap.PSKPeer) to the device's serial; nil refuses
	// PSK sessions.
	PSKSerial func(identity string) (string, bool)
}

func (c *Config) setDefaults() {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 16 << 10
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// ErrBadMessage is a request body that is not what the operation takes.
var ErrBadMessage = errors.New("bad EST message")

// DecodeCSR reads a PKCS#10 request as EST carries it: base64 (RFC 8951:
// whether or not Content-Transfer-Encoding says so; line breaks and spaces
// are ignored), or DER as EST-coaps and some older clients send it.
func DecodeCSR(body []byte) ([]byte, error) {
	if len(body) > 0 && body[0] == 0x30 { // an ASN.1 SEQUENCE; base64 of one starts with 'M'
		if rest, err := asn1.Unmarshal(body, &asn1.RawValue{}); err == nil && len(rest) == 0 {
			return body, nil
		}
	}
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: empty body; want a base64 PKCS#10 request", ErrBadMessage)
	}
	clean := make([]byte, 0, len(body))
	for _, b := range body {
		switch b {
		case '\r', '\n', ' ', '\t':
		default:
			clean = append(clean, b)
		}
	}
	der := make([]byte, base64.StdEncoding.DecodedLen(len(clean)))
	n, err := base64.StdEncoding.Decode(der, clean)
	if err != nil {
		return nil, fmt.Errorf("%w: body is neither base64 nor DER: %w", ErrBadMessage, err)
	}
	der = der[:n]
	var rest asn1.RawValue
	if trailing, err := asn1.Unmarshal(der, &rest); err != nil || len(trailing) > 0 {
		return nil, fmt.Errorf("%w: body does not decode to one DER structure", ErrBadMessage)
	}
	return der, nil
}

// CertsOnly encodes certificates as a degenerate PKCS#7 SignedData
// ("certs-only", RFC 7030 4.1.3 and 4.2.3), DER.
func CertsOnly(certs []*x509.Certificate) ([]byte, error) {
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	return pkcs7.DegenerateCertificate(raw)
}

// ParseCertsOnly reads a degenerate PKCS#7 (DER) back into certificates.
// It is its own strict DER reader: the PKCS#7 package's BER reader panics on
// some malformed input (FuzzParseCertsOnly found one), and a device or the
// simulator must be able to read an answer it cannot trust.
func ParseCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue `asn1:"explicit,tag:0"`
	}
	if rest, err := asn1.Unmarshal(der, &ci); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: not a DER PKCS#7 ContentInfo", ErrBadMessage)
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: PKCS#7 content is %v, not signedData", ErrBadMessage, ci.ContentType)
	}
	var sd struct {
		Version          int
		DigestAlgorithms asn1.RawValue
		ContentInfo      asn1.RawValue
		Certificates     asn1.RawValue `asn1:"optional,tag:0"`
		CRLs             asn1.RawValue `asn1:"optional,tag:1"`
		SignerInfos      asn1.RawValue
	}
	if rest, err := asn1.Unmarshal(ci.Content.Bytes, &sd); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: not a DER PKCS#7 SignedData", ErrBadMessage)
	}
	certs, err := x509.ParseCertificates(sd.Certificates.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: PKCS#7 certificates: %w", ErrBadMessage, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: PKCS#7 holds no certificate", ErrBadMessage)
	}
	return certs, nil
}

var oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}

// Object identifiers of the CSR attributes provisiond asks for.
var (
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidP256            = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
)

type csrAttribute struct {
	Type   asn1.ObjectIdentifier
	Values []asn1.ObjectIdentifier `asn1:"set"`
}

// CSRAttrs is the /csrattrs answer (RFC 7030 4.5.2), DER: an EC key on
// P-256, signed with ECDSA and SHA-256. Subject names are not asked for:
// provisiond writes the device's identity into the certificate itself and
// ignores what a CSR names.
func CSRAttrs() []byte {
	ec, _ := asn1.Marshal(csrAttribute{Type: oidECPublicKey, Values: []asn1.ObjectIdentifier{oidP256}})
	sig, _ := asn1.Marshal(oidECDSAWithSHA256)
	der, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true,
		Bytes: append(sig, ec...)})
	return der
}

// Outcome is an error's answer, for either transport.
type Outcome struct {
	HTTP       int           // HTTP status
	RetryAfter time.Duration // > 0: Retry-After (HTTP), Max-Age (CoAP)
	Message    string
	// Challenge asks for HTTP Basic credentials (WWW-Authenticate).
	Challenge bool
}

// Classify maps an enroll error to its EST answer. RFC 7030 4.2.3: 202
// with Retry-After while the request cannot be decided yet (a device not
// claimed for a site); otherwise 4xx for the client's errors and 5xx with
// Retry-After when the server is short of something.
func Classify(err error) Outcome {
	retry, _ := enroll.RetryAfter(err)
	switch {
	case errors.Is(err, enroll.ErrNotClaimed):
		return Outcome{HTTP: 202, RetryAfter: retry, Message: "accepted: the device is not claimed for a site yet; retry after the hint"}
	case errors.Is(err, enroll.ErrThrottled):
		return Outcome{HTTP: 429, RetryAfter: retry, Message: err.Error()}
	case errors.Is(err, enroll.ErrOverloaded), errors.Is(err, enroll.ErrPoolExhausted):
		return Outcome{HTTP: 503, RetryAfter: max(retry, time.Second), Message: err.Error()}
	case errors.Is(err, kv.ErrUnavailable):
		return Outcome{HTTP: 503, RetryAfter: 15 * time.Second, Message: "the inventory's store is unavailable; retry later"}
	case errors.Is(err, ErrBadMessage), errors.Is(err, enroll.ErrInvalid), errors.Is(err, enroll.ErrUnsupportedKey):
		return Outcome{HTTP: 400, Message: err.Error()}
	case errors.Is(err, enroll.ErrUnauthorized):
		return Outcome{HTTP: 401, Message: err.Error(), Challenge: true}
	case errors.Is(err, enroll.ErrRevoked), errors.Is(err, enroll.ErrTokenUsed), errors.Is(err, enroll.ErrAlreadyProvisioned),
		errors.Is(err, enroll.ErrUnknownDevice), errors.Is(err, errForbidden), errors.Is(err, enroll.ErrNoLwM2MProfile):
		return Outcome{HTTP: 403, Message: err.Error()}
	}
	return Outcome{HTTP: 500, Message: "internal error"}
}

var errForbidden = errors.New("forbidden")

// keyMatches reports whether a CSR certifies the same key as cert (a
// re-enrollment renews the certificate of the key the device proved it
// holds in the handshake).
func keyMatches(csrDER []byte, cert *x509.Certificate) error {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return fmt.Errorf("%w: csr: not a DER PKCS#10 request: %w", enroll.ErrInvalid, err)
	}
	if !bytes.Equal(csr.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("%w: the CSR's key is not the key of the certificate presented; re-enrollment renews that key's certificate", errForbidden)
	}
	return nil
}
