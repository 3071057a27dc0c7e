package devices

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// Device records and audit events are stored in CBOR with the integer keys of Device's cbor
// tags: the certificate and hashes as bytes instead of base64, no field
// names. A provisioned device's record is about 730 bytes (deviceRecord)
// instead of the 1,450 of its JSON (issue 17: bytes written per enrollment, store per
// device). Records written as JSON before still read: a JSON record starts
// with '{', which no CBOR map does; each is rewritten in CBOR by its next
// change.
var (
	// Times as RFC 3339 with nanoseconds: exact, as the JSON records were
	// (an audit event's hash is over its JSON, time included).
	recordEnc = must(cbor.EncOptions{Time: cbor.TimeRFC3339Nano, Sort: cbor.SortCoreDeterministic}.EncMode())
	// Times as Unix seconds: an integer, or a float with the microseconds
	// (5 or 9 bytes instead of 31 of text). Device records use it for all
	// their times (seven in a provisioned device's record), audit events for
	// theirs (storedTime). Times are kept to the microsecond: encodeDevice
	// and appendAudit round them, and reads round away the float's error.
	unixTimeEnc = must(cbor.EncOptions{Time: cbor.TimeUnixDynamic, Sort: cbor.SortCoreDeterministic}.EncMode())
	recordDec   = must(cbor.DecOptions{MaxArrayElements: 1 << 16, MaxMapPairs: 1 << 16}.DecMode())
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// roundTimes brings a device record's times to the microsecond, in UTC, as
// they are stored. (Every record read or written passes here: it allocates
// nothing.)
func roundTimes(d *Device) {
	round := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Round(time.Microsecond).UTC()
		}
	}
	round(&d.CertNotAfter)
	round(&d.RenewedAt)
	round(&d.LastSeen)
	round(&d.ProvisionedAt)
	round(&d.CreatedAt)
	round(&d.UpdatedAt)
	if d.Lease != nil {
		round(&d.Lease.Expires)
	}
}

// deviceRecord is a Device as the store keeps it: the Device's own fields
// (CBOR, integer keys), less what can be had from the rest of the record
// (issue 17: store per device):
//   - a known State as a number (storedState), under the State's own key;
//   - CertSerial, PublicKeyHash and CertNotAfter when they are CertDER's
//     serial (in hex), the SHA-256 of its SubjectPublicKeyInfo and its
//     NotAfter, as enrollment and renewal set them (CertFacts): 75 bytes;
//   - a BatchID that is a UUID in canonical form, as its 16 bytes (Batch);
//   - a lease's device ID and site when they are the device's own.
//
// Every one of them is restored by decodeDevice, so a read gives back
// exactly what was written, and a record written before reads as it always
// did. The certificate facts and the batch are left out only from a record
// whose state is a number: a reader from before this layout refuses a
// number there (its State is text), so it cannot take such a record for
// a whole one, nor write one back without what it left out.
type deviceRecord struct {
	Device
	State     storedState `cbor:"6,keyasint"` // shadows Device.State
	CertFacts bool        `cbor:"33,keyasint,omitempty"`
	Batch     []byte      `cbor:"34,keyasint,omitempty"`
}

// stateCodes number the known states for storedState and the index
// (fieldStateCode).
var stateCodes = codebook{1: string(StateManufactured), 2: string(StateClaimed), 3: string(StateProvisioned),
	4: string(StateActive), 5: string(StateRevoked)}

func stateCode(s State) uint8 { return uint8(stateCodes.code(string(s))) }

// storedState is a device's state in its record: a number when stateCodes
// has it, else its text.
type storedState State

func (s storedState) MarshalCBOR() ([]byte, error) { return stateCodes.marshal(string(s)) }

func (s *storedState) UnmarshalCBOR(data []byte) error {
	return stateCodes.unmarshal(data, (*string)(s))
}

// encodeDevice stores d, its times rounded to the microsecond (in d too, so
// that the caller holds what a read gives).
func encodeDevice(d *Device) ([]byte, error) {
	roundTimes(d)
	r := deviceRecord{Device: *d, State: storedState(d.State)}
	coded := stateCode(d.State) != 0
	if l := d.Lease; l != nil && (l.DeviceID == d.ID || l.Site == d.Site) {
		short := *l
		if short.DeviceID == d.ID {
			short.DeviceID = uuid.Nil
		}
		if short.Site == d.Site {
			short.Site = ""
		}
		r.Lease = &short
	}
	if coded && len(d.CertDER) > 0 {
		if serial, keyHash, notAfter, ok := certFacts(d.CertDER); ok && serial == d.CertSerial &&
			bytes.Equal(keyHash, d.PublicKeyHash) && notAfter.Equal(d.CertNotAfter) {
			r.CertSerial, r.PublicKeyHash, r.CertNotAfter, r.CertFacts = "", nil, time.Time{}, true
		}
	}
	if id, err := uuid.Parse(d.BatchID); err == nil && id.String() == d.BatchID && coded {
		r.BatchID, r.Batch = "", id[:]
	}
	raw, err := unixTimeEnc.Marshal(&r)
	if err != nil {
		return nil, fmt.Errorf("encode device %s: %w", d.ID, err)
	}
	return raw, nil
}

func decodeDevice(raw []byte, d *Device) error {
	if len(raw) > 0 && raw[0] == '{' {
		*d = Device{}
		if err := json.Unmarshal(raw, d); err != nil {
			return fmt.Errorf("decode device record: %w", err)
		}
		roundTimes(d)
		return nil
	}
	var r deviceRecord
	if err := recordDec.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decode device record: %w", err)
	}
	*d = r.Device
	d.State = State(r.State)
	if l := d.Lease; l != nil {
		if l.DeviceID == uuid.Nil {
			l.DeviceID = d.ID
		}
		if l.Site == "" {
			l.Site = d.Site
		}
	}
	if r.CertFacts {
		serial, keyHash, notAfter, ok := certFacts(d.CertDER)
		if !ok {
			return fmt.Errorf("decode device record %s: its certificate does not parse", d.ID)
		}
		d.CertSerial, d.PublicKeyHash, d.CertNotAfter = serial, keyHash, notAfter
	}
	if len(r.Batch) == 16 {
		d.BatchID = uuid.UUID(r.Batch).String()
	}
	roundTimes(d)
	return nil
}

// certFacts reads from a certificate's DER what a device record keeps
// beside it: its serial number in hex (as fmt's %x gives a big.Int), the
// SHA-256 of its SubjectPublicKeyInfo and its NotAfter. It walks the
// TBSCertificate's first fields with cryptobyte (about 1 µs, where
// x509.ParseCertificate takes tens), and checks nothing else.
func certFacts(der []byte) (serial string, keyHash []byte, notAfter time.Time, ok bool) {
	in := cryptobyte.String(der)
	var cert, tbs, validity, spki, notBefore cryptobyte.String
	var tag asn1.Tag
	var sn big.Int
	if !in.ReadASN1(&cert, asn1.SEQUENCE) || !cert.ReadASN1(&tbs, asn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(asn1.Tag(0).Constructed().ContextSpecific()) || // version
		!tbs.ReadASN1Integer(&sn) ||
		!tbs.SkipASN1(asn1.SEQUENCE) || // signature algorithm
		!tbs.SkipASN1(asn1.SEQUENCE) || // issuer
		!tbs.ReadASN1(&validity, asn1.SEQUENCE) ||
		!validity.ReadAnyASN1Element(&notBefore, &tag) || !readTime(&validity, &notAfter) || // NotBefore, NotAfter
		!tbs.SkipASN1(asn1.SEQUENCE) || // subject
		!tbs.ReadASN1Element(&spki, asn1.SEQUENCE) {
		return "", nil, time.Time{}, false
	}
	h := sha256.Sum256(spki)
	return sn.Text(16), h[:], notAfter.UTC(), true
}

func readTime(s *cryptobyte.String, t *time.Time) bool {
	if s.PeekASN1Tag(asn1.UTCTime) {
		return s.ReadASN1UTCTime(t)
	}
	return s.ReadASN1GeneralizedTime(t)
}

// auditRecord is an AuditEvent as the audit log stores it (CBOR). Its hashes
// are stored as their 32 bytes and its time, when whole microseconds in UTC
// (appendAudit makes it so), as Unix seconds: 81 bytes fewer per event than
// the hex and RFC 3339 text of the JSON the hash is computed over, to which
// each converts back exactly. Its action and detail keys are numbers when
// a codebook has them, its UUID and hex details bytes. Events stored
// before, with the text, still read.
type auditRecord struct {
	Chain    uint16       `cbor:"1,keyasint,omitempty"`
	Seq      uint64       `cbor:"2,keyasint"`
	Time     storedTime   `cbor:"3,keyasint"`
	Actor    string       `cbor:"4,keyasint,omitempty"`
	Action   storedAction `cbor:"5,keyasint"`
	Target   string       `cbor:"6,keyasint"`
	Source   string       `cbor:"7,keyasint,omitempty"`
	Detail   storedDetail `cbor:"8,keyasint,omitempty"`
	PrevHash storedText   `cbor:"9,keyasint"` // a hash: its 32 bytes
	Hash     storedText   `cbor:"10,keyasint"`
	// SelfActor stands for an Actor of "device:<Target>", a device acting on
	// itself (its enrollment, state reports, lease renewals: most events),
	// which is then not stored.
	SelfActor bool `cbor:"11,keyasint,omitempty"`
}

// codebook numbers names that records often hold (a device's state, an
// audit event's action and detail keys), so that they store a number
// instead of the text. Codes are stored: a codebook only grows, at its end.
type codebook []string

// auditActions are the actions of a device's own events, written per
// device (enrollment, renewals, state reports) and by jobs over thousands.
var auditActions = codebook{1: "device.active", 2: "device.claim", 3: "device.enroll", 4: "device.rebootstrap",
	5: "device.reconfigure", 6: "device.register", 7: "device.renew", 8: "device.reopen", 9: "device.revoke",
	10: "device.wifi_psk", 11: "lease.expire", 12: "lease.release", 13: "lease.renew"}

// auditDetailKeys are the detail keys those events use.
var auditDetailKeys = codebook{1: "device_id", 2: "transport", 3: "cert_serial", 4: "site", 5: "auth",
	6: "factory_ca", 7: "replaces", 8: "config_version", 9: "address", 10: "reason", 11: "job", 12: "cleared"}

func (c codebook) code(s string) uint64 {
	for i, k := range c {
		if i > 0 && k == s {
			return uint64(i)
		}
	}
	return 0
}

func (c codebook) name(code uint64) (string, error) {
	if code == 0 || code >= uint64(len(c)) {
		return "", fmt.Errorf("no name for code %d", code)
	}
	return c[code], nil
}

// marshal stores s as its code when it has one, else as its text.
func (c codebook) marshal(s string) ([]byte, error) {
	if code := c.code(s); code != 0 {
		return recordEnc.Marshal(code)
	}
	return recordEnc.Marshal(s)
}

// unmarshal reads what marshal stored: a code (an unsigned integer) or text.
func (c codebook) unmarshal(data []byte, s *string) error {
	if len(data) > 0 && data[0]>>5 == 0 {
		var code uint64
		if err := recordDec.Unmarshal(data, &code); err != nil {
			return err
		}
		name, err := c.name(code)
		*s = name
		return err
	}
	return recordDec.Unmarshal(data, s)
}

// storedAction is an event's action, stored as its number in
// auditActions when it has one, else as its text.
type storedAction string

func (a storedAction) MarshalCBOR() ([]byte, error) { return auditActions.marshal(string(a)) }

func (a *storedAction) UnmarshalCBOR(data []byte) error {
	return auditActions.unmarshal(data, (*string)(a))
}

// storedDetail is an event's details: keys in auditDetailKeys as their
// numbers, values as storedText.
type storedDetail map[string]string

func (d storedDetail) MarshalCBOR() ([]byte, error) {
	m := make(map[any]storedText, len(d))
	for k, v := range d {
		if c := auditDetailKeys.code(k); c != 0 {
			m[c] = storedText(v)
		} else {
			m[k] = storedText(v)
		}
	}
	return recordEnc.Marshal(m)
}

func (d *storedDetail) UnmarshalCBOR(data []byte) error {
	var m map[any]storedText
	if err := recordDec.Unmarshal(data, &m); err != nil {
		return err
	}
	out := make(storedDetail, len(m))
	for k, v := range m {
		switch k := k.(type) {
		case string:
			out[k] = string(v)
		case uint64:
			name, err := auditDetailKeys.name(k)
			if err != nil {
				return fmt.Errorf("detail: %w", err)
			}
			out[name] = string(v)
		default:
			return fmt.Errorf("detail: a key of type %T", k)
		}
	}
	*d = out
	return nil
}

// storedText is an event's hash or detail: a UUID in canonical form is
// stored as its 16 bytes (tagged 37, RFC 9562's CBOR tag), lower-case hex of
// whole bytes as those bytes (a hash, a certificate serial), anything else
// as the text. Each reads back to the same text: a hash takes 32 bytes
// instead of 64, an enrollment's device_id and cert_serial 35 fewer.
type storedText string

const cborTagUUID = 37

func (t storedText) MarshalCBOR() ([]byte, error) {
	s := string(t)
	if len(s) == 36 {
		if id, err := uuid.Parse(s); err == nil && id.String() == s {
			return recordEnc.Marshal(cbor.Tag{Number: cborTagUUID, Content: id[:]})
		}
	}
	if len(s) >= 4 {
		if b, err := hex.DecodeString(s); err == nil && hex.EncodeToString(b) == s {
			return recordEnc.Marshal(b)
		}
	}
	return recordEnc.Marshal(s)
}

func (t *storedText) UnmarshalCBOR(data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("empty value")
	}
	switch data[0] >> 5 {
	case 2: // a byte string: hex
		var b []byte
		if err := recordDec.Unmarshal(data, &b); err != nil {
			return err
		}
		*t = storedText(hex.EncodeToString(b))
		return nil
	case 6: // a tag: a UUID
		var tag cbor.Tag
		if err := recordDec.Unmarshal(data, &tag); err != nil {
			return err
		}
		b, ok := tag.Content.([]byte)
		if tag.Number != cborTagUUID || !ok || len(b) != 16 {
			return fmt.Errorf("unknown tag %d", tag.Number)
		}
		*t = storedText(uuid.UUID(b).String())
		return nil
	}
	var s string
	if err := recordDec.Unmarshal(data, &s); err != nil {
		return err
	}
	*t = storedText(s)
	return nil
}

// storedTime is an event's time: Unix seconds (an integer, or a float with
// the microseconds) when it is in UTC with whole microseconds, else RFC 3339
// text with nanoseconds. Either reads back to the same time.Time, so the
// event's JSON, and its hash, are unchanged.
type storedTime time.Time

func (t storedTime) MarshalCBOR() ([]byte, error) {
	tt := time.Time(t)
	if tt.Location() == time.UTC && tt.Nanosecond()%1000 == 0 {
		return unixTimeEnc.Marshal(tt)
	}
	return recordEnc.Marshal(tt)
}

func (t *storedTime) UnmarshalCBOR(data []byte) error {
	var tt time.Time
	if err := recordDec.Unmarshal(data, &tt); err != nil {
		return err
	}
	if len(data) > 0 && data[0]>>5 != 3 { // a number, not text
		tt = tt.Round(time.Microsecond).UTC()
	}
	*t = storedTime(tt)
	return nil
}

// encodeAuditEvent stores an event (its hash is over its JSON, whatever
// stores it: HashAuditEvent). An enrollment's event is about 180 bytes
// instead of the 500 of its JSON.
func encodeAuditEvent(ev *AuditEvent) ([]byte, error) {
	r := auditRecord{Chain: ev.Chain, Seq: ev.Seq, Time: storedTime(ev.Time), Actor: ev.Actor,
		Action: storedAction(ev.Action), Target: ev.Target, Source: ev.Source, Detail: storedDetail(ev.Detail),
		PrevHash: storedText(ev.PrevHash), Hash: storedText(ev.Hash)}
	if ev.Target != "" && ev.Actor == selfActor(ev.Target) {
		r.Actor, r.SelfActor = "", true
	}
	raw, err := recordEnc.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode audit event: %w", err)
	}
	return raw, nil
}

// decodeAuditRecord reads a stored event, CBOR or (written before) JSON.
func decodeAuditRecord(raw []byte, ev *AuditEvent) error {
	if len(raw) > 0 && raw[0] == '{' {
		return json.Unmarshal(raw, ev)
	}
	var r auditRecord
	if err := recordDec.Unmarshal(raw, &r); err != nil {
		return err
	}
	*ev = AuditEvent{Chain: r.Chain, Seq: r.Seq, Time: time.Time(r.Time), Actor: r.Actor, Action: string(r.Action),
		Target: r.Target, Source: r.Source, Detail: map[string]string(r.Detail), PrevHash: string(r.PrevHash), Hash: string(r.Hash)}
	if r.SelfActor {
		ev.Actor = selfActor(r.Target)
	}
	return nil
}

// selfActor is the Actor of a device acting on itself: its Target is its serial.
func selfActor(serial string) string { return "device:" + serial }
