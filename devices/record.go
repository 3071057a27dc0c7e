package devices

import (
	"encoding/json"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Device records and audit events are stored in CBOR with the integer keys of Device's cbor
// tags: the certificate and hashes as bytes instead of base64, no field
// names. A provisioned device's record is about 900 bytes instead of the
// 1,450 of its JSON (issue 17: bytes written per enrollment, store per
// device). Records written as JSON before still read: a JSON record starts
// with '{', which no CBOR map does; each is rewritten in CBOR by its next
// change.
var (
	// Times as RFC 3339 with nanoseconds: exact, as the JSON records were.
	recordEnc = must(cbor.EncOptions{Time: cbor.TimeRFC3339Nano, Sort: cbor.SortCoreDeterministic}.EncMode())
	recordDec = must(cbor.DecOptions{MaxArrayElements: 1 << 16, MaxMapPairs: 1 << 16}.DecMode())
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func encodeDevice(d *Device) ([]byte, error) {
	raw, err := recordEnc.Marshal(d)
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
	return nil
}

// encodeAuditEvent stores an event (its hash is over its JSON, whatever
// stores it: HashAuditEvent). An enrollment's event is about 370 bytes
// instead of 500.
func encodeAuditEvent(ev *AuditEvent) ([]byte, error) {
	raw, err := recordEnc.Marshal(ev)
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
	return recordDec.Unmarshal(raw, ev)
}
