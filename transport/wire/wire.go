// Package wire holds the bootstrap messages that devices and provisiond
// exchange, encoded as CBOR (CoAP content-format 60) or JSON
// (content-format 50, MQTT, HTTP) from the same structs. Binary fields (CSR,
// certificates) are DER byte strings in CBOR and PEM text in JSON.
//
// The device side (package simulator, real firmware) and the server side
// (package transport/coap and friends) both use these types, so the two can
// never drift apart. docs/protocol.md describes them field by field.
package wire

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"
)

// Format is a payload encoding, numbered as CoAP content-formats.
type Format uint16

// Supported formats.
const (
	JSON Format = 50
	CBOR Format = 60
)

func (f Format) String() string {
	switch f {
	case JSON:
		return "application/json"
	case CBOR:
		return "application/cbor"
	}
	return fmt.Sprintf("content-format %d", uint16(f))
}

// Limits on what a device may send.
const (
	MaxRequestBytes = 4096 // a P-384 CSR in PEM inside JSON fits with room
)

// ErrFormat is returned for a payload that does not decode.
var ErrFormat = errors.New("malformed payload")

// EnrollRequest is the body of POST /enroll.
type EnrollRequest struct {
	Serial          string `json:"serial" cbor:"serial"`
	ClaimToken      string `json:"claim_token" cbor:"claim_token"`
	CSR             CSR    `json:"csr" cbor:"csr"`
	Model           string `json:"model,omitempty" cbor:"model,omitempty"`
	FirmwareVersion string `json:"firmware_version,omitempty" cbor:"firmware_version,omitempty"`
	MAC             string `json:"mac,omitempty" cbor:"mac,omitempty"`
}

// EnrollResponse is the body of a 2.01 answer to POST /enroll.
type EnrollResponse struct {
	DeviceID      string  `json:"device_id" cbor:"device_id"`
	Certificate   Chain   `json:"certificate" cbor:"certificate"` // leaf first
	CA            Cert    `json:"ca" cbor:"ca"`                   // root
	WiFi          WiFi    `json:"wifi" cbor:"wifi"`
	Network       Network `json:"network" cbor:"network"`
	Lease         Lease   `json:"lease" cbor:"lease"`
	ConfigVersion uint64  `json:"config_version" cbor:"config_version"`
	// Firmware is the device's firmware target, FirmwareKey the PEM of the
	// Ed25519 key its manifests are signed with (absent when the server
	// has no firmware catalogue).
	Firmware    *FirmwareTarget `json:"firmware,omitempty" cbor:"firmware,omitempty"`
	FirmwareKey string          `json:"firmware_key,omitempty" cbor:"firmware_key,omitempty"`
}

// WiFi is the network the device joins.
type WiFi struct {
	SSID       string `json:"ssid" cbor:"ssid"`
	Security   string `json:"security" cbor:"security"`
	Passphrase string `json:"passphrase" cbor:"passphrase"`
	// EAP is set for the enterprise modes (wpa2-enterprise,
	// wpa3-enterprise), whose passphrase is empty: the device joins with
	// EAP-TLS and the certificate provisiond issued it.
	EAP *EAP `json:"eap,omitempty" cbor:"eap,omitempty"`
}

// EAP is the 802.1X settings of an enterprise network.
type EAP struct {
	Method   string `json:"method" cbor:"method"`     // "tls"
	Identity string `json:"identity" cbor:"identity"` // the outer identity: the device UUID
	// ServerName is the name the RADIUS server's certificate must carry;
	// absent when the site names none.
	ServerName string `json:"server_name,omitempty" cbor:"server_name,omitempty"`
	// CA is the certificate (DER) the RADIUS server's chains to:
	// provisiond's root.
	CA []byte `json:"ca" cbor:"ca"`
}

// Network is the device's static IPv4 configuration.
type Network struct {
	Address   string   `json:"address" cbor:"address"`
	PrefixLen int      `json:"prefix_len" cbor:"prefix_len"`
	Gateway   string   `json:"gateway" cbor:"gateway"`
	DNS       []string `json:"dns,omitempty" cbor:"dns,omitempty"`
	NTP       []string `json:"ntp,omitempty" cbor:"ntp,omitempty"`
}

// Lease is the address the device holds and when it must renew.
type Lease struct {
	Address   string    `json:"address" cbor:"address"`
	ExpiresAt time.Time `json:"expires_at" cbor:"expires_at"` // RFC 3339 text in both encodings
}

// LeaseResponse is the body of a 2.04 answer to POST /lease.
type LeaseResponse struct {
	Lease         Lease   `json:"lease" cbor:"lease"`
	Network       Network `json:"network" cbor:"network"`
	ConfigVersion uint64  `json:"config_version" cbor:"config_version"`
}

// Error is the body of every error answer that has a format to answer in.
type Error struct {
	Code       string `json:"code" cbor:"code"`                                   // stable, machine-readable
	Message    string `json:"message" cbor:"message"`                             // short, for humans
	RetryAfter int    `json:"retry_after,omitempty" cbor:"retry_after,omitempty"` // seconds
}

// CSR is a PKCS#10 request: DER bytes in CBOR, a PEM "CERTIFICATE REQUEST" in JSON.
type CSR []byte

// MarshalJSON renders PEM.
func (c CSR) MarshalJSON() ([]byte, error) { return pemJSON("CERTIFICATE REQUEST", c) }

// UnmarshalJSON accepts PEM ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST").
func (c *CSR) UnmarshalJSON(b []byte) error {
	der, err := pemFromJSON(b, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
	*c = der
	return err
}

// Cert is one certificate: DER in CBOR, PEM in JSON.
type Cert []byte

// MarshalJSON renders PEM.
func (c Cert) MarshalJSON() ([]byte, error) { return pemJSON("CERTIFICATE", c) }

// UnmarshalJSON accepts one PEM certificate.
func (c *Cert) UnmarshalJSON(b []byte) error {
	der, err := pemFromJSON(b, "CERTIFICATE")
	*c = der
	return err
}

// Chain is certificates leaf first: an array of DER byte strings in CBOR,
// one string of concatenated PEM blocks in JSON.
type Chain [][]byte

// MarshalJSON renders concatenated PEM.
func (c Chain) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	for _, der := range c {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return json.Marshal(b.String())
}

// UnmarshalJSON parses concatenated PEM certificates.
func (c *Chain) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	rest := []byte(s)
	*c = nil
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("chain: unexpected PEM block %q", blk.Type)
		}
		*c = append(*c, blk.Bytes)
	}
	if len(*c) == 0 {
		return errors.New("chain: no PEM certificate")
	}
	return nil
}

func pemJSON(typ string, der []byte) ([]byte, error) {
	if len(der) == 0 {
		return []byte(`""`), nil
	}
	return json.Marshal(string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})))
}

func pemFromJSON(b []byte, types ...string) ([]byte, error) {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if s == "" {
		return nil, nil
	}
	blk, rest := pem.Decode([]byte(s))
	if blk == nil {
		return nil, fmt.Errorf("want PEM %s", types[0])
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after PEM block")
	}
	for _, t := range types {
		if blk.Type == t {
			return blk.Bytes, nil
		}
	}
	return nil, fmt.Errorf("PEM block is %q, want %q", blk.Type, types[0])
}

var (
	cborDec cbor.DecMode
	cborEnc cbor.EncMode
)

func init() {
	var err error
	cborDec, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF, // duplicate keys are an error, not "last wins"
		MaxNestedLevels:  8,
		MaxArrayElements: 64,
		MaxMapPairs:      32,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		// Unknown fields are ignored (the default), for forward compatibility.
	}.DecMode()
	if err != nil {
		panic(err)
	}
	cborEnc, err = cbor.EncOptions{Time: cbor.TimeRFC3339, Sort: cbor.SortCoreDeterministic}.EncMode()
	if err != nil {
		panic(err)
	}
}

// Marshal encodes v in format f.
func Marshal(f Format, v any) ([]byte, error) {
	switch f {
	case CBOR:
		return cborEnc.Marshal(v)
	case JSON:
		return json.Marshal(v)
	}
	return nil, fmt.Errorf("marshal: unsupported %s", f)
}

// Unmarshal decodes data in format f into v. Trailing data is an error.
func Unmarshal(f Format, data []byte, v any) error {
	var err error
	switch f {
	case CBOR:
		err = cborDec.Unmarshal(data, v)
	case JSON:
		dec := json.NewDecoder(bytes.NewReader(data))
		if err = dec.Decode(v); err == nil && dec.More() {
			err = errors.New("trailing data after JSON value")
		}
	default:
		return fmt.Errorf("unmarshal: unsupported %s", f)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return nil
}

// RenewRequest asks for a new certificate (POST /renew, MQTT
// devices/{id}/renew/...), on a session authenticated with the current one.
type RenewRequest struct {
	CSR CSR `json:"csr" cbor:"csr"`
}

// RenewResponse carries the new certificate.
type RenewResponse struct {
	Certificate Chain `json:"certificate" cbor:"certificate"` // leaf first
	CA          Cert  `json:"ca" cbor:"ca"`
}

// FirmwareTarget is the image a device should run: its version, size and
// digest, where to download it, and its manifest signed with the firmware
// key (docs/protocol.md, Firmware).
type FirmwareTarget struct {
	Version   string   `json:"version" cbor:"version"`
	Size      int64    `json:"size" cbor:"size"`
	SHA256    string   `json:"sha256" cbor:"sha256"`
	URIs      []string `json:"uris" cbor:"uris"`
	Manifest  []byte   `json:"manifest" cbor:"manifest"`
	Signature []byte   `json:"signature" cbor:"signature"`
}

// Reply is an answer on MQTT, which has no status codes: Status is the CoAP
// code the same answer has on CoAP ("2.01", "4.01", ...), and exactly one of
// the other fields is set.
type Reply struct {
	Status     string          `json:"status" cbor:"status"`
	Enrollment *EnrollResponse `json:"enrollment,omitempty" cbor:"enrollment,omitempty"`
	Lease      *LeaseResponse  `json:"lease,omitempty" cbor:"lease,omitempty"`
	Renewal    *RenewResponse  `json:"renewal,omitempty" cbor:"renewal,omitempty"`
	Error      *Error          `json:"error,omitempty" cbor:"error,omitempty"`
}

// DeviceConfig is a device's current configuration, pushed on its
// operational channel (MQTT: retained on devices/{id}/config).
type DeviceConfig struct {
	DeviceID      string  `json:"device_id" cbor:"device_id"`
	ConfigVersion uint64  `json:"config_version" cbor:"config_version"`
	WiFi          WiFi    `json:"wifi" cbor:"wifi"`
	Network       Network `json:"network" cbor:"network"`
	Lease         Lease   `json:"lease" cbor:"lease"`
	// Firmware is the image the device should run; absent when nothing
	// targets it.
	Firmware *FirmwareTarget `json:"firmware,omitempty" cbor:"firmware,omitempty"`
}

// StateReport is what a device reports about itself on its operational
// channel (MQTT: devices/{id}/state).
type StateReport struct {
	ConfigVersion   uint64 `json:"config_version" cbor:"config_version"` // the config version it applied
	FirmwareVersion string `json:"firmware_version,omitempty" cbor:"firmware_version,omitempty"`
	Health          string `json:"health,omitempty" cbor:"health,omitempty"` // "ok", "degraded", free text up to 256 bytes
}
