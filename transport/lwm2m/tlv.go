// Package lwm2m holds what provisiond needs of OMA LwM2M to act as a
// bootstrap server: the data model of the objects it writes (Security /0,
// Server /1, WLAN connectivity /12) and their encodings, OMA-TLV
// (content-format 11542), SenML CBOR (112) and SenML JSON (110).
//
// Every decoder here reads input from devices: it is strict, bounded, and
// fuzzed (FuzzDecodeTLV, FuzzDecodeSenML).
package lwm2m

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrMalformed is returned for an encoding that does not decode.
var ErrMalformed = errors.New("malformed LwM2M payload")

// TLV identifier types (OMA-TS-LightweightM2M_Core §7.4.3, bits 7-6 of the
// type byte).
const (
	TLVObjectInstance   = 0 // holds resource TLVs
	TLVResourceInstance = 1 // one instance of a multiple resource
	TLVMultipleResource = 2 // holds resource instance TLVs
	TLVResource         = 3 // a resource with its value
)

// TLV is one OMA-TLV entry: a value, or (object instance, multiple
// resource) the entries it holds.
type TLV struct {
	Type     int
	ID       uint16
	Value    []byte // resources and resource instances
	Children []TLV  // object instances and multiple resources
}

// maxTLVDepth bounds nesting: object instance > multiple resource >
// resource instance.
const maxTLVDepth = 3

// EncodeTLV appends the OMA-TLV encoding of entries to b.
func EncodeTLV(b []byte, entries ...TLV) []byte {
	for _, e := range entries {
		value := e.Value
		if e.Type == TLVObjectInstance || e.Type == TLVMultipleResource {
			value = EncodeTLV(nil, e.Children...)
		}
		t := byte(e.Type&3) << 6
		if e.ID > 0xff {
			t |= 1 << 5
		}
		n := len(value)
		switch {
		case n < 8:
			t |= byte(n)
		case n <= 0xff:
			t |= 1 << 3
		case n <= 0xffff:
			t |= 2 << 3
		default:
			t |= 3 << 3
		}
		b = append(b, t)
		if e.ID > 0xff {
			b = binary.BigEndian.AppendUint16(b, e.ID)
		} else {
			b = append(b, byte(e.ID))
		}
		switch {
		case n < 8:
		case n <= 0xff:
			b = append(b, byte(n))
		case n <= 0xffff:
			b = binary.BigEndian.AppendUint16(b, uint16(n))
		default:
			b = append(b, byte(n>>16), byte(n>>8), byte(n))
		}
		b = append(b, value...)
	}
	return b
}

// DecodeTLV decodes a sequence of OMA-TLV entries, nested ones included.
func DecodeTLV(b []byte) ([]TLV, error) { return decodeTLV(b, 0) }

func decodeTLV(b []byte, depth int) ([]TLV, error) {
	if depth >= maxTLVDepth {
		return nil, fmt.Errorf("%w: TLV nested deeper than %d", ErrMalformed, maxTLVDepth)
	}
	var out []TLV
	for len(b) > 0 {
		t := b[0]
		b = b[1:]
		e := TLV{Type: int(t >> 6)}
		idLen := 1 + int(t>>5&1)
		if len(b) < idLen {
			return nil, fmt.Errorf("%w: TLV identifier truncated", ErrMalformed)
		}
		if idLen == 2 {
			e.ID = binary.BigEndian.Uint16(b)
		} else {
			e.ID = uint16(b[0])
		}
		b = b[idLen:]
		n := int(t & 7)
		if lenLen := int(t >> 3 & 3); lenLen > 0 { // bits 2-0 are then ignored
			if len(b) < lenLen {
				return nil, fmt.Errorf("%w: TLV length truncated", ErrMalformed)
			}
			n = 0
			for _, c := range b[:lenLen] {
				n = n<<8 | int(c)
			}
			b = b[lenLen:]
		}
		if len(b) < n {
			return nil, fmt.Errorf("%w: TLV value of %d bytes, %d left", ErrMalformed, n, len(b))
		}
		value := b[:n]
		b = b[n:]
		switch e.Type {
		case TLVObjectInstance, TLVMultipleResource:
			children, err := decodeTLV(value, depth+1)
			if err != nil {
				return nil, err
			}
			want := TLVResource
			if e.Type == TLVMultipleResource {
				want = TLVResourceInstance
			}
			for _, c := range children {
				if c.Type != want && !(e.Type == TLVObjectInstance && c.Type == TLVMultipleResource) {
					return nil, fmt.Errorf("%w: TLV entry of type %d inside one of type %d", ErrMalformed, c.Type, e.Type)
				}
			}
			e.Children = children
		default:
			e.Value = value
		}
		out = append(out, e)
	}
	return out, nil
}
