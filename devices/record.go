package devices

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"
)

// Device records and audit events are stored in CBOR with the integer keys of Device's cbor
// tags: the certificate and hashes as bytes instead of base64, no field
// names. A provisioned device's record is about 830 bytes instead of the
// 1,450 of its JSON (issue 17: bytes written per enrollment, store per
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

// encodeDevice stores d, its times rounded to the microsecond (in d too, so
// that the caller holds what a read gives).
func encodeDevice(d *Device) ([]byte, error) {
	roundTimes(d)
	if l := d.Lease; l != nil && (l.DeviceID == d.ID || l.Site == d.Site) {
		// Stored without what the record already says (decodeDevice).
		short := *l
		if short.DeviceID == d.ID {
			short.DeviceID = uuid.Nil
		}
		if short.Site == d.Site {
			short.Site = ""
		}
		d.Lease = &short
		defer func() { d.Lease = l }()
	}
	raw, err := unixTimeEnc.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode device %s: %w", d.ID, err)
	}
	return raw, nil
}

func decodeDevice(raw []byte, d *Device) error {
	var err error
	if len(raw) > 0 && raw[0] == '{' {
		err = json.Unmarshal(raw, d)
	} else {
		err = recordDec.Unmarshal(raw, d)
	}
	if err != nil {
		return fmt.Errorf("decode device record: %w", err)
	}
	if l := d.Lease; l != nil {
		if l.DeviceID == uuid.Nil {
			l.DeviceID = d.ID
		}
		if l.Site == "" {
			l.Site = d.Site
		}
	}
	roundTimes(d)
	return nil
}

// auditRecord is an AuditEvent as the audit log stores it (CBOR). Its hashes
// are stored as their 32 bytes and its time, when whole microseconds in UTC
// (appendAudit makes it so), as Unix seconds: 81 bytes fewer per event than
// the hex and RFC 3339 text of the JSON the hash is computed over, to which
// each converts back exactly. Events stored before, with the text, still
// read.
type auditRecord struct {
	Chain    uint16            `cbor:"1,keyasint,omitempty"`
	Seq      uint64            `cbor:"2,keyasint"`
	Time     storedTime        `cbor:"3,keyasint"`
	Actor    string            `cbor:"4,keyasint,omitempty"`
	Action   string            `cbor:"5,keyasint"`
	Target   string            `cbor:"6,keyasint"`
	Source   string            `cbor:"7,keyasint,omitempty"`
	Detail   map[string]string `cbor:"8,keyasint,omitempty"`
	PrevHash storedHash        `cbor:"9,keyasint"`
	Hash     storedHash        `cbor:"10,keyasint"`
	// SelfActor stands for an Actor of "device:<Target>", a device acting on
	// itself (its enrollment, state reports, lease renewals: most events),
	// which is then not stored.
	SelfActor bool `cbor:"11,keyasint,omitempty"`
}

// storedHash is a hex hash, stored as its bytes when that gives back the
// same text (lower-case hex), else as the text.
type storedHash string

func (h storedHash) MarshalCBOR() ([]byte, error) {
	if b, err := hex.DecodeString(string(h)); err == nil && hex.EncodeToString(b) == string(h) {
		return recordEnc.Marshal(b)
	}
	return recordEnc.Marshal(string(h))
}

func (h *storedHash) UnmarshalCBOR(data []byte) error {
	if len(data) > 0 && data[0]>>5 == 2 { // a byte string
		var b []byte
		if err := recordDec.Unmarshal(data, &b); err != nil {
			return err
		}
		*h = storedHash(hex.EncodeToString(b))
		return nil
	}
	var s string
	if err := recordDec.Unmarshal(data, &s); err != nil {
		return err
	}
	*h = storedHash(s)
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
// stores it: HashAuditEvent). An enrollment's event is about 310 bytes
// instead of the 500 of its JSON.
func encodeAuditEvent(ev *AuditEvent) ([]byte, error) {
	r := auditRecord{Chain: ev.Chain, Seq: ev.Seq, Time: storedTime(ev.Time), Actor: ev.Actor,
		Action: ev.Action, Target: ev.Target, Source: ev.Source, Detail: ev.Detail,
		PrevHash: storedHash(ev.PrevHash), Hash: storedHash(ev.Hash)}
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
	*ev = AuditEvent{Chain: r.Chain, Seq: r.Seq, Time: time.Time(r.Time), Actor: r.Actor, Action: r.Action,
		Target: r.Target, Source: r.Source, Detail: r.Detail, PrevHash: string(r.PrevHash), Hash: string(r.Hash)}
	if r.SelfActor {
		ev.Actor = selfActor(r.Target)
	}
	return nil
}

// selfActor is the Actor of a device acting on itself: its Target is its serial.
func selfActor(serial string) string { return "device:" + serial }
