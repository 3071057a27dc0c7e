package firmware

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// Manifest describes one firmware image.
type Manifest struct {
	Model         string    `json:"model"`
	Version       string    `json:"version"` // dotted numbers, e.g. 1.4.2
	Size          int64     `json:"size"`
	SHA256        string    `json:"sha256"` // hex
	MinBootloader string    `json:"min_bootloader,omitempty"`
	MinHardware   string    `json:"min_hardware,omitempty"`
	Notes         string    `json:"notes,omitempty"`
	Created       time.Time `json:"created"`
}

// Signed is a manifest as devices get it: the exact bytes that were signed
// (the manifest's JSON) and their Ed25519 signature. Both travel as bytes
// (base64 in JSON), never as nested JSON: an encoder that re-indents or
// reorders nested JSON would break the signature.
type Signed struct {
	Manifest  []byte `json:"manifest" cbor:"manifest"`
	Signature []byte `json:"signature" cbor:"signature"`
}

var (
	versionRE = regexp.MustCompile(`^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$`)
	digestRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidModel reports whether a model name is acceptable: the inventory's
// rule for model names (devices.ValidName), so that every model a device
// can have can get firmware. Such names are safe as directory names.
func ValidModel(m string) bool { return devices.ValidName(m) }

// ValidVersion reports whether v is 1 to 4 dotted numbers.
func ValidVersion(v string) bool { return versionRE.MatchString(v) }

// ValidDigest reports whether d is a lower-case hex SHA-256.
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// CompareVersions compares dotted versions numerically: -1, 0 or 1
// ("1.10" > "1.9"; "1.2" == "1.2.0"). Both must be valid.
func CompareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(as), len(bs)) {
		var x, y int64
		if i < len(as) {
			x, _ = strconv.ParseInt(as[i], 10, 64)
		}
		if i < len(bs) {
			y, _ = strconv.ParseInt(bs[i], 10, 64)
		}
		switch {
		case x < y:
			return -1
		case x > y:
			return 1
		}
	}
	return 0
}

// Validate checks every field a device relies on.
func (m Manifest) Validate() error {
	switch {
	case !ValidModel(m.Model):
		return fmt.Errorf("%w: model %q: 1-32 of [A-Za-z0-9_-]", ErrInvalid, m.Model)
	case !ValidVersion(m.Version):
		return fmt.Errorf("%w: version %q: 1 to 4 dotted numbers", ErrInvalid, m.Version)
	case m.Size <= 0:
		return fmt.Errorf("%w: size %d", ErrInvalid, m.Size)
	case !ValidDigest(m.SHA256):
		return fmt.Errorf("%w: sha256 %q", ErrInvalid, m.SHA256)
	case m.MinBootloader != "" && !ValidVersion(m.MinBootloader):
		return fmt.Errorf("%w: min_bootloader %q", ErrInvalid, m.MinBootloader)
	case m.MinHardware != "" && !ValidVersion(m.MinHardware):
		return fmt.Errorf("%w: min_hardware %q", ErrInvalid, m.MinHardware)
	case len(m.Notes) > 4096:
		return fmt.Errorf("%w: release notes longer than 4096 bytes", ErrInvalid)
	}
	return nil
}

// Sign encodes and signs a manifest.
func Sign(key ed25519.PrivateKey, m Manifest) (Signed, error) {
	if err := m.Validate(); err != nil {
		return Signed{}, err
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return Signed{}, err
	}
	return Signed{Manifest: raw, Signature: ed25519.Sign(key, raw)}, nil
}

// Verify checks a signed manifest with the firmware public key and returns
// the manifest. Only the signed bytes are decoded.
func Verify(pub ed25519.PublicKey, s Signed) (Manifest, error) {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, s.Manifest, s.Signature) {
		return Manifest{}, ErrBadSignature
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(s.Manifest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: manifest: %w", ErrInvalid, err)
	}
	return m, m.Validate()
}

// CheckImage reads an image to its end and checks it against the
// manifest's size and digest.
func (m Manifest) CheckImage(r io.Reader) error {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, m.Size+1))
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	if n != m.Size {
		return fmt.Errorf("%w: %d bytes, the manifest says %d", ErrImageMismatch, n, m.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return fmt.Errorf("%w: sha256 %s, the manifest says %s", ErrImageMismatch, got, m.SHA256)
	}
	return nil
}

// Device is what a device knows of itself when it decides whether to
// install an image.
type Device struct {
	Model      string
	Running    string // the version it runs ("" if unknown)
	Floor      string // it never installs below this version ("" for none)
	Bootloader string // "" if unknown
	Hardware   string // "" if unknown
}

// Allows reports why d must not install m, or nil. A device installs only
// its own model's images, never below its floor, and only when its
// bootloader and hardware revision are at least the manifest's minimum.
// Going back to an older version above the floor is allowed: that is how an
// aborted rollout is undone.
func (m Manifest) Allows(d Device) error {
	switch {
	case m.Model != d.Model:
		return fmt.Errorf("%w: image for model %s, device is %s", ErrNotAllowed, m.Model, d.Model)
	case d.Floor != "" && CompareVersions(m.Version, d.Floor) < 0:
		return fmt.Errorf("%w: version %s is below the device's floor %s", ErrNotAllowed, m.Version, d.Floor)
	case m.MinBootloader != "" && (d.Bootloader == "" || CompareVersions(d.Bootloader, m.MinBootloader) < 0):
		return fmt.Errorf("%w: needs bootloader %s, device has %q", ErrNotAllowed, m.MinBootloader, d.Bootloader)
	case m.MinHardware != "" && (d.Hardware == "" || CompareVersions(d.Hardware, m.MinHardware) < 0):
		return fmt.Errorf("%w: needs hardware revision %s, device has %q", ErrNotAllowed, m.MinHardware, d.Hardware)
	}
	return nil
}
