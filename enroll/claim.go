package enroll

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"strings"
)

// tokenEncoding is Crockford-like base32 without padding: no 0/O or 1/I/L
// confusion when a token is typed from a label.
var tokenEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// Claim-token limits. Tokens from factory manifests may use their own
// alphabet but must be long enough to carry real entropy.
const (
	MinTokenLen = 16
	MaxTokenLen = 128
)

// NewClaimToken returns a fresh claim token with 160 bits of entropy (32 characters).
func NewClaimToken() string {
	var b [20]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return tokenEncoding.EncodeToString(b[:])
}

// HashToken is how claim tokens are stored: SHA-256 of the token's bytes.
// Tokens are high-entropy random strings, so a fast unsalted hash is safe and
// lets a factory line hand over hashes instead of tokens.
func HashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// FormatTokenHash renders a token hash as "sha256:<hex>", the form factory manifests use.
func FormatTokenHash(h []byte) string { return "sha256:" + hex.EncodeToString(h) }

// ParseTokenHash accepts "sha256:<64 hex>" or bare 64 hex digits.
func ParseTokenHash(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), "sha256:")
	h, err := hex.DecodeString(s)
	if err != nil || len(h) != sha256.Size {
		return nil, fmt.Errorf("%w: claim_token_hash: want sha256:<64 hex digits>", ErrInvalid)
	}
	return h, nil
}

// CheckToken validates a claim token's form (not its value).
func CheckToken(t string) error {
	if len(t) < MinTokenLen || len(t) > MaxTokenLen {
		return fmt.Errorf("%w: claim_token: must be %d-%d characters", ErrInvalid, MinTokenLen, MaxTokenLen)
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] > '~' {
			return fmt.Errorf("%w: claim_token: printable ASCII only", ErrInvalid)
		}
	}
	return nil
}

// NewSerial returns a fresh serial for a device of model: "<model>-<10
// base32 characters>" (50 random bits; the server refuses a duplicate).
func NewSerial(model string) string {
	var b [7]byte
	_, _ = rand.Read(b[:])
	return model + "-" + tokenEncoding.EncodeToString(b[:])[:10]
}
