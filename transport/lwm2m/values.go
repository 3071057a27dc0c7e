package lwm2m

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Kind is a resource's data type (OMA-TS-LightweightM2M_Core Appendix C).
type Kind int

// Resource data types provisiond writes and reads.
const (
	String Kind = iota + 1
	Integer
	Boolean
	Opaque
	Float
)

// Value is a resource's value.
type Value struct {
	Kind  Kind
	Str   string
	Int   int64
	Bool  bool
	Bytes []byte
	Float float64
}

// Str, Int, Bool and Bytes make values.
func Str(s string) Value         { return Value{Kind: String, Str: s} }
func Int(i int64) Value          { return Value{Kind: Integer, Int: i} }
func Bool(b bool) Value          { return Value{Kind: Boolean, Bool: b} }
func Bytes(b []byte) Value       { return Value{Kind: Opaque, Bytes: b} }
func FloatValue(f float64) Value { return Value{Kind: Float, Float: f} }

func (v Value) String() string {
	switch v.Kind {
	case String:
		return strconv.Quote(v.Str)
	case Integer:
		return strconv.FormatInt(v.Int, 10)
	case Boolean:
		return strconv.FormatBool(v.Bool)
	case Opaque:
		return fmt.Sprintf("opaque(%d bytes)", len(v.Bytes))
	case Float:
		return strconv.FormatFloat(v.Float, 'g', -1, 64)
	}
	return "none"
}

// tlvValue is v's OMA-TLV value bytes: integers in the fewest of 1, 2, 4
// or 8 bytes, two's complement; booleans one byte; floats 8 bytes.
func (v Value) tlvValue() []byte {
	switch v.Kind {
	case String:
		return []byte(v.Str)
	case Integer:
		switch {
		case v.Int >= math.MinInt8 && v.Int <= math.MaxInt8:
			return []byte{byte(v.Int)}
		case v.Int >= math.MinInt16 && v.Int <= math.MaxInt16:
			return binary.BigEndian.AppendUint16(nil, uint16(v.Int))
		case v.Int >= math.MinInt32 && v.Int <= math.MaxInt32:
			return binary.BigEndian.AppendUint32(nil, uint32(v.Int))
		}
		return binary.BigEndian.AppendUint64(nil, uint64(v.Int))
	case Boolean:
		if v.Bool {
			return []byte{1}
		}
		return []byte{0}
	case Opaque:
		return v.Bytes
	case Float:
		return binary.BigEndian.AppendUint64(nil, math.Float64bits(v.Float))
	}
	return nil
}

// FromTLV reads an OMA-TLV value as kind.
func FromTLV(kind Kind, b []byte) (Value, error) {
	switch kind {
	case String:
		return Str(string(b)), nil
	case Opaque:
		return Bytes(b), nil
	case Integer:
		switch len(b) {
		case 1:
			return Int(int64(int8(b[0]))), nil
		case 2:
			return Int(int64(int16(binary.BigEndian.Uint16(b)))), nil
		case 4:
			return Int(int64(int32(binary.BigEndian.Uint32(b)))), nil
		case 8:
			return Int(int64(binary.BigEndian.Uint64(b))), nil
		}
		return Value{}, fmt.Errorf("%w: integer of %d bytes", ErrMalformed, len(b))
	case Boolean:
		if len(b) != 1 || b[0] > 1 {
			return Value{}, fmt.Errorf("%w: boolean is not one byte of 0 or 1", ErrMalformed)
		}
		return Bool(b[0] == 1), nil
	case Float:
		switch len(b) {
		case 4:
			return FloatValue(float64(math.Float32frombits(binary.BigEndian.Uint32(b)))), nil
		case 8:
			return FloatValue(math.Float64frombits(binary.BigEndian.Uint64(b))), nil
		}
		return Value{}, fmt.Errorf("%w: float of %d bytes", ErrMalformed, len(b))
	}
	return Value{}, fmt.Errorf("%w: unknown kind %d", ErrMalformed, kind)
}

// Path is an LwM2M path: /Object[/Instance[/Resource[/ResourceInstance]]].
type Path struct {
	IDs []uint16 // 1 to 4 of them
}

// NewPath returns the path of the given IDs.
func NewPath(ids ...uint16) Path { return Path{IDs: ids} }

func (p Path) String() string {
	var b strings.Builder
	for _, id := range p.IDs {
		b.WriteByte('/')
		b.WriteString(strconv.Itoa(int(id)))
	}
	if b.Len() == 0 {
		return "/"
	}
	return b.String()
}

// ParsePath reads "/3/0/1" (and "/" as the root).
func ParsePath(s string) (Path, error) {
	if s == "/" {
		return Path{}, nil
	}
	if !strings.HasPrefix(s, "/") {
		return Path{}, fmt.Errorf("%w: path %q does not start with /", ErrMalformed, s)
	}
	parts := strings.Split(s[1:], "/")
	if len(parts) > 4 {
		return Path{}, fmt.Errorf("%w: path %q is deeper than object/instance/resource/instance", ErrMalformed, s)
	}
	p := Path{IDs: make([]uint16, 0, len(parts))}
	for _, part := range parts {
		n, err := strconv.ParseUint(part, 10, 16)
		if err != nil || (len(part) > 1 && part[0] == '0') {
			return Path{}, fmt.Errorf("%w: path %q: %q is not an ID of 0-65535", ErrMalformed, s, part)
		}
		p.IDs = append(p.IDs, uint16(n))
	}
	return p, nil
}
