// Package profile is the device certificate profile: what a provisiond
// device certificate says (the device's identity, a urn:uuid URI SAN) and
// which keys it may certify, readable without the CA. The domain (enroll)
// and every front end use it; package pki signs by it.
package profile

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"

	"github.com/google/uuid"
)

// ErrUnsupportedKey is returned when a key is of a type or size the CA does
// not certify.
var ErrUnsupportedKey = errors.New("unsupported public key")

// ErrNoIdentity is returned when a certificate carries no device identity.
var ErrNoIdentity = errors.New("certificate carries no urn:uuid device identity")

// Device is what the server decided a device's certificate says.
type Device struct {
	ID     uuid.UUID
	Serial string
	Model  string
	Site   string
}

// URI is the device's urn:uuid identity.
func (d Device) URI() *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "uuid:" + d.ID.String()}
}

// CheckKey reports whether pub is a key type the CA certifies: ECDSA P-256
// or P-384, or Ed25519, each only when allowed.
func CheckKey(pub crypto.PublicKey, allowP384, allowEd25519 bool) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch {
		case k.Curve == elliptic.P256():
			return nil
		case k.Curve == elliptic.P384() && allowP384:
			return nil
		}
		return fmt.Errorf("%w: ECDSA %s", ErrUnsupportedKey, k.Curve.Params().Name)
	case ed25519.PublicKey:
		if allowEd25519 {
			return nil
		}
		return fmt.Errorf("%w: Ed25519 is not enabled", ErrUnsupportedKey)
	default:
		return fmt.Errorf("%w: %T (use ECDSA P-256)", ErrUnsupportedKey, pub)
	}
}

// Identify extracts the device UUID (urn:uuid URI SAN) and the
// certificate's serial (hex) from a device certificate.
func Identify(c *x509.Certificate) (uuid.UUID, string, error) {
	for _, u := range c.URIs {
		if u.Scheme == "urn" && len(u.Opaque) == len("uuid:")+36 && u.Opaque[:5] == "uuid:" {
			id, err := uuid.Parse(u.Opaque[5:])
			if err == nil {
				return id, fmt.Sprintf("%x", c.SerialNumber), nil
			}
		}
	}
	return uuid.Nil, "", ErrNoIdentity
}
