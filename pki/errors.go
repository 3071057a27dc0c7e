package pki

import (
	"errors"

	"github.com/provisiond/provisiond/pki/profile"
)

var (
	// ErrBadPassphrase is returned when the CA keys cannot be decrypted with the given passphrase.
	ErrBadPassphrase = errors.New("cannot decrypt CA key: wrong passphrase?")
	// ErrUnsupportedKey is returned when a CSR's key is of a type or size
	// the CA does not certify (profile.CheckKey's sentinel).
	ErrUnsupportedKey = profile.ErrUnsupportedKey
	// ErrTemplate is returned when the certificate template cannot be parsed or rendered.
	ErrTemplate = errors.New("certificate template")
	// ErrIncompleteCA is returned when the CA directory holds some but not all CA files.
	ErrIncompleteCA = errors.New("incomplete CA directory")
)
