package pki

import "errors"

var (
	// ErrBadPassphrase is returned when the CA keys cannot be decrypted with the given passphrase.
	ErrBadPassphrase = errors.New("cannot decrypt CA key: wrong passphrase?")
	// ErrUnsupportedKey is returned when a CSR's key is of a type or size the CA does not certify.
	ErrUnsupportedKey = errors.New("unsupported public key")
	// ErrTemplate is returned when the certificate template cannot be parsed or rendered.
	ErrTemplate = errors.New("certificate template")
	// ErrIncompleteCA is returned when the CA directory holds some but not all CA files.
	ErrIncompleteCA = errors.New("incomplete CA directory")
)
