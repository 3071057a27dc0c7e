// Package seal encrypts short secrets kept in the inventory (Wi-Fi
// passphrases) under a key derived from the server's master secret. It lives
// apart from package pki so that the inventory can recognise a sealed value
// without linking the CA.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Prefix starts every value a Sealer sealed.
const Prefix = "sealed:v1:"

// ErrUnseal is returned when a sealed value does not open: it was changed,
// or sealed under another master secret.
var ErrUnseal = errors.New("sealed value does not open (tampered with, or another master secret)")

// Sealer encrypts short secrets kept in the inventory (Wi-Fi passphrases)
// with AES-256-GCM under a key derived from the server's master secret (the
// CA passphrase) with HKDF-SHA256. A sealed value is text: Prefix and
// the base64 of nonce and ciphertext.
type Sealer struct {
	aead cipher.AEAD
}

// New derives the sealing key from the master secret.
func New(master []byte) (*Sealer, error) {
	if len(master) < 16 {
		return nil, errors.New("sealer: master secret shorter than 16 bytes")
	}
	key, err := hkdf.Key(sha256.New, master, nil, "provisiond inventory secrets v1", 32)
	if err != nil {
		return nil, fmt.Errorf("sealer: derive key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plain. The empty string and values already sealed are
// returned as they are.
func (s *Sealer) Seal(plain string) (string, error) {
	if plain == "" || strings.HasPrefix(plain, Prefix) {
		return plain, nil
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := s.aead.Seal(nonce, nonce, []byte(plain), []byte(Prefix))
	return Prefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open decrypts a sealed value. A value without Prefix was stored
// before sealing existed and is returned as it is (it is sealed on its next
// write).
func (s *Sealer) Open(v string) (string, error) {
	rest, ok := strings.CutPrefix(v, Prefix)
	if !ok {
		return v, nil
	}
	raw, err := base64.RawStdEncoding.DecodeString(rest)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", ErrUnseal
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], []byte(Prefix))
	if err != nil {
		return "", ErrUnseal
	}
	return string(plain), nil
}
