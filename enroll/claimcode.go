package enroll

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/url"
	"strings"

	"github.com/provisiond/provisiond/devices"
)

// Claim codes go on a device's label (as a QR code) and let an installer
// bind the device to a site. They carry a secret of their own, not the
// device's claim token: reading a label lets you claim the device, not
// impersonate it.
//
// Version 1 form: "PD1:<serial>:<secret>:<check>", where secret is 16
// characters of the claim-token alphabet (80 bits) and check is 2 more
// characters derived from SHA-256 of the rest (a typo is caught before any
// request). As a URL: https://<host>/claim#PD1:... (the fragment never
// reaches a server log).
const ClaimCodePrefix = "PD1"

const (
	claimSecretLen = 16
	claimCheckLen  = 2
)

// ClaimCode is a parsed claim code.
type ClaimCode struct {
	Serial string
	Secret string
}

func claimCheck(serial, secret string) string {
	h := sha256.Sum256([]byte(ClaimCodePrefix + ":" + serial + ":" + secret))
	return tokenEncoding.EncodeToString(h[:])[:claimCheckLen]
}

// NewClaimCode makes a fresh claim code for a serial.
func NewClaimCode(serial string) ClaimCode {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return ClaimCode{Serial: serial, Secret: tokenEncoding.EncodeToString(b[:])}
}

// String renders the code: PD1:<serial>:<secret>:<check>.
func (c ClaimCode) String() string {
	return ClaimCodePrefix + ":" + c.Serial + ":" + c.Secret + ":" + claimCheck(c.Serial, c.Secret)
}

// URL renders the code as a link an installer's phone camera opens.
func (c ClaimCode) URL(base string) string {
	return strings.TrimRight(base, "/") + "/claim#" + c.String()
}

// Hash is what the server stores for the code's secret.
func (c ClaimCode) Hash() []byte {
	h := sha256.Sum256([]byte("claim:" + c.Serial + ":" + c.Secret))
	return h[:]
}

// ParseClaimCode accepts a code, in either form, typed or scanned: surrounding
// space is ignored and the secret and check are case-insensitive.
func ParseClaimCode(s string) (ClaimCode, error) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '#'); i >= 0 { // the URL form
		frag, err := url.PathUnescape(s[i+1:])
		if err != nil {
			return ClaimCode{}, fmt.Errorf("%w: claim code: bad URL fragment", ErrInvalid)
		}
		s = frag
	}
	parts := strings.Split(s, ":")
	if len(parts) != 4 || !strings.EqualFold(parts[0], ClaimCodePrefix) {
		return ClaimCode{}, fmt.Errorf("%w: claim code: want %s:<serial>:<secret>:<check>", ErrInvalid, ClaimCodePrefix)
	}
	c := ClaimCode{Serial: parts[1], Secret: strings.ToUpper(parts[2])}
	check := strings.ToUpper(parts[3])
	switch {
	case !devices.ValidSerial(c.Serial):
		return ClaimCode{}, fmt.Errorf("%w: claim code: bad serial", ErrInvalid)
	case len(c.Secret) != claimSecretLen || len(check) != claimCheckLen:
		return ClaimCode{}, fmt.Errorf("%w: claim code: wrong length", ErrInvalid)
	}
	if _, err := tokenEncoding.DecodeString(c.Secret); err != nil {
		return ClaimCode{}, fmt.Errorf("%w: claim code: bad characters", ErrInvalid)
	}
	if check != claimCheck(c.Serial, c.Secret) {
		return ClaimCode{}, fmt.Errorf("%w: claim code: check characters do not match (mistyped?)", ErrInvalid)
	}
	return c, nil
}
