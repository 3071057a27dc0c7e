package enroll

import (
	"errors"
	"time"
)

var (
	// ErrInvalid is returned when a request is malformed: a missing or oversized
	// field, a CSR that does not parse or whose signature does not verify.
	ErrInvalid = errors.New("invalid request")
	// ErrUnsupportedKey is returned when the CSR's key type is not allowed.
	ErrUnsupportedKey = errors.New("unsupported key type")
	// ErrUnauthorized is returned when the serial is unknown or the claim token
	// is wrong; the two are deliberately indistinguishable.
	ErrUnauthorized = errors.New("unknown serial or wrong claim token")
	// ErrNotClaimed is returned when a device has no site yet; it should retry later.
	ErrNotClaimed = errors.New("device is not claimed for a site yet")
	// ErrRevoked is returned for every attempt by a revoked device.
	ErrRevoked = errors.New("device is revoked")
	// ErrTokenUsed is returned when a claim token that already enrolled a device
	// is presented with a different key.
	ErrTokenUsed = errors.New("claim token already used")
	// ErrAlreadyProvisioned is returned when a provisioned device enrolls again
	// with its own key after the retry window; it should renew instead.
	ErrAlreadyProvisioned = errors.New("device already provisioned")
	// ErrThrottled is returned when too many attempts failed for a serial or a source.
	ErrThrottled = errors.New("too many failed attempts")
	// ErrPoolExhausted is returned when the device's site has no free address.
	ErrPoolExhausted = errors.New("site address pool exhausted")
	// ErrForbidden is returned when an operator's token may not act on what it names.
	ErrForbidden = errors.New("forbidden")
	// ErrOverloaded is returned when the service is handling as many
	// enrollments as it may; the caller retries after the hint.
	ErrOverloaded = errors.New("too many enrollments in progress")
	// ErrUnknownDevice is returned when an authenticated device is not in the inventory.
	ErrUnknownDevice = errors.New("unknown device")
)

// RetryError wraps an error that the caller may retry after a while (CoAP
// Max-Age, HTTP Retry-After).
type RetryError struct {
	Err   error
	After time.Duration
}

func (e *RetryError) Error() string { return e.Err.Error() }
func (e *RetryError) Unwrap() error { return e.Err }

// RetryAfter reports how long the caller should wait before retrying, if the
// error says.
func RetryAfter(err error) (time.Duration, bool) {
	var re *RetryError
	if errors.As(err, &re) {
		return re.After, true
	}
	return 0, false
}
