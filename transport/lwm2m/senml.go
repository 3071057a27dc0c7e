package lwm2m

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"

	"github.com/fxamacker/cbor/v2"
)

// Record is one SenML record (RFC 8428) as LwM2M uses it: a base name and
// a name that, joined, are the resource's path, and one value.
type Record struct {
	BaseName string   `json:"bn,omitempty" cbor:"-2,keyasint,omitempty"`
	Name     string   `json:"n,omitempty" cbor:"0,keyasint,omitempty"`
	V        *float64 `json:"v,omitempty" cbor:"2,keyasint,omitempty"`
	VS       *string  `json:"vs,omitempty" cbor:"3,keyasint,omitempty"`
	VB       *bool    `json:"vb,omitempty" cbor:"4,keyasint,omitempty"`
	VD       []byte   `json:"-" cbor:"8,keyasint,omitzero"` // JSON: base64url text (below)
}

// recordJSON is a Record with vd as SenML JSON writes it: base64url text
// without padding (RFC 8428 §5).
type recordJSON struct {
	BaseName string   `json:"bn,omitempty"`
	Name     string   `json:"n,omitempty"`
	V        *float64 `json:"v,omitempty"`
	VS       *string  `json:"vs,omitempty"`
	VB       *bool    `json:"vb,omitempty"`
	VD       *string  `json:"vd,omitempty"`
}

// MaxRecords bounds a SenML pack read from a device.
const MaxRecords = 1024

var (
	senmlDec cbor.DecMode
	senmlEnc cbor.EncMode
)

func init() {
	var err error
	senmlDec, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		MaxArrayElements:  MaxRecords,
		MaxMapPairs:       16,
		MaxNestedLevels:   4,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	if senmlEnc, err = (cbor.EncOptions{Sort: cbor.SortCoreDeterministic}).EncMode(); err != nil {
		panic(err)
	}
}

// Entry is a resolved SenML record: the full path and the value.
type Entry struct {
	Path  Path
	Value Value
}

// EncodeSenML encodes entries as a SenML pack, CBOR (cbor true) or JSON,
// each record naming its full path (no base name).
func EncodeSenML(entries []Entry, asCBOR bool) ([]byte, error) {
	recs := make([]Record, len(entries))
	for i, e := range entries {
		r := Record{Name: e.Path.String()}
		switch v := e.Value; v.Kind {
		case String:
			s := v.Str
			r.VS = &s
		case Integer:
			f := float64(v.Int)
			r.V = &f
		case Float:
			f := v.Float
			r.V = &f
		case Boolean:
			b := v.Bool
			r.VB = &b
		case Opaque:
			r.VD = v.Bytes
			if r.VD == nil {
				r.VD = []byte{}
			}
		default:
			return nil, fmt.Errorf("senml: %s has no value", e.Path)
		}
		recs[i] = r
	}
	if asCBOR {
		return senmlEnc.Marshal(recs)
	}
	js := make([]recordJSON, len(recs))
	for i, r := range recs {
		js[i] = recordJSON{Name: r.Name, V: r.V, VS: r.VS, VB: r.VB}
		if r.VD != nil {
			s := base64.RawURLEncoding.EncodeToString(r.VD)
			js[i].VD = &s
		}
	}
	return json.Marshal(js)
}

// DecodeSenML decodes a SenML pack, CBOR or JSON, into entries: base names
// carried forward, paths parsed, one value per record. Integers come back
// as Float values (SenML has one number type); Entry.Value.AsInt reads them.
func DecodeSenML(b []byte, asCBOR bool) ([]Entry, error) {
	var recs []Record
	if asCBOR {
		if err := senmlDec.Unmarshal(b, &recs); err != nil {
			return nil, fmt.Errorf("%w: SenML CBOR: %w", ErrMalformed, err)
		}
	} else {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var js []recordJSON
		if err := dec.Decode(&js); err != nil {
			return nil, fmt.Errorf("%w: SenML JSON: %w", ErrMalformed, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%w: SenML JSON: data after the pack", ErrMalformed)
		}
		if len(js) > MaxRecords {
			return nil, fmt.Errorf("%w: SenML: more than %d records", ErrMalformed, MaxRecords)
		}
		recs = make([]Record, len(js))
		for i, r := range js {
			recs[i] = Record{BaseName: r.BaseName, Name: r.Name, V: r.V, VS: r.VS, VB: r.VB}
			if r.VD != nil {
				d, err := base64.RawURLEncoding.DecodeString(*r.VD)
				if err != nil {
					return nil, fmt.Errorf("%w: SenML JSON: vd of record %d is not base64url: %w", ErrMalformed, i+1, err)
				}
				recs[i].VD = d
				if recs[i].VD == nil {
					recs[i].VD = []byte{}
				}
			}
		}
	}
	out := make([]Entry, 0, len(recs))
	base := ""
	for i, r := range recs {
		if r.BaseName != "" {
			base = r.BaseName
		}
		p, err := ParsePath(base + r.Name)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i+1, err)
		}
		e := Entry{Path: p}
		n := 0
		if r.V != nil {
			if math.IsNaN(*r.V) || math.IsInf(*r.V, 0) {
				return nil, fmt.Errorf("%w: record %d: v is not a finite number", ErrMalformed, i+1)
			}
			e.Value, n = FloatValue(*r.V), n+1
		}
		if r.VS != nil {
			e.Value, n = Str(*r.VS), n+1
		}
		if r.VB != nil {
			e.Value, n = Bool(*r.VB), n+1
		}
		if r.VD != nil {
			e.Value, n = Bytes(r.VD), n+1
		}
		if n > 1 {
			return nil, fmt.Errorf("%w: record %d (%s) has %d values", ErrMalformed, i+1, p, n)
		}
		out = append(out, e) // no value: a path alone (a Discover or Read request)
	}
	return out, nil
}

// AsInt reads a value as an integer: an Integer, or a Float that holds a
// whole number (SenML's numbers).
func (v Value) AsInt() (int64, bool) {
	switch v.Kind {
	case Integer:
		return v.Int, true
	case Float:
		if v.Float == math.Trunc(v.Float) && math.Abs(v.Float) <= 1<<53 {
			return int64(v.Float), true
		}
	}
	return 0, false
}
