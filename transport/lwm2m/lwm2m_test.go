package lwm2m_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/transport/lwm2m"
)

// The Device object example of the LwM2M core specification's TLV
// appendix decodes to what it says, and encodes back to the same bytes.
func TestTLVSpecExample(t *testing.T) {
	raw, _ := hex.DecodeString(strings.Join([]string{
		"C800144F70656E204D6F62696C6520416C6C69616E6365",     // 0: "Open Mobile Alliance"
		"C801164C69676874776569676874204D324D20436C69656E74", // 1: "Lightweight M2M Client"
		"C80209333435303030313233",                           // 2: "345000123"
		"C303312E30",                                         // 3: "1.0"
		"8606" + "410001" + "410105",                         // 6: multiple resource {0: 1, 1: 5}
	}, ""))
	got, err := lwm2m.DecodeTLV(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 || string(got[0].Value) != "Open Mobile Alliance" || string(got[1].Value) != "Lightweight M2M Client" ||
		string(got[2].Value) != "345000123" || got[3].ID != 3 || string(got[3].Value) != "1.0" {
		t.Fatalf("decoded %+v", got)
	}
	ps := got[4]
	if ps.Type != lwm2m.TLVMultipleResource || ps.ID != 6 || len(ps.Children) != 2 || ps.Children[1].ID != 1 || !bytes.Equal(ps.Children[1].Value, []byte{5}) {
		t.Fatalf("power sources: %+v", ps)
	}
	if again := lwm2m.EncodeTLV(nil, got...); !bytes.Equal(again, raw) {
		t.Fatalf("re-encoded\n%X\nwant\n%X", again, raw)
	}
}

// Identifiers over 255 and values of every length class round-trip.
func TestTLVRoundTrip(t *testing.T) {
	in := []lwm2m.TLV{
		{Type: lwm2m.TLVObjectInstance, ID: 300, Children: []lwm2m.TLV{
			{Type: lwm2m.TLVResource, ID: 0, Value: bytes.Repeat([]byte{'a'}, 7)},
			{Type: lwm2m.TLVResource, ID: 1, Value: bytes.Repeat([]byte{'b'}, 200)},
			{Type: lwm2m.TLVResource, ID: 1000, Value: bytes.Repeat([]byte{'c'}, 70000)},
			{Type: lwm2m.TLVMultipleResource, ID: 2, Children: []lwm2m.TLV{{Type: lwm2m.TLVResourceInstance, ID: 9, Value: []byte{1}}}},
		}},
	}
	raw := lwm2m.EncodeTLV(nil, in...)
	out, err := lwm2m.DecodeTLV(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(lwm2m.EncodeTLV(nil, out...), raw) || out[0].ID != 300 || len(out[0].Children[2].Value) != 70000 {
		t.Fatal("round trip changed the entries")
	}
}

func TestTLVRefusals(t *testing.T) {
	for name, hexIn := range map[string]string{
		"identifier truncated":                     "C8",
		"length truncated":                         "C800",
		"value truncated":                          "C80005414243",
		"16-bit identifier truncated":              "E800",
		"resource inside a resource instance list": "8603" + "C10001",
		"too deep":                                 "0008" + "0006" + "0004" + "C1000000",
	} {
		raw, _ := hex.DecodeString(hexIn)
		if _, err := lwm2m.DecodeTLV(raw); !errors.Is(err, lwm2m.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// Values keep their type and value through TLV.
func TestTLVValues(t *testing.T) {
	for _, v := range []lwm2m.Value{lwm2m.Int(0), lwm2m.Int(-1), lwm2m.Int(300), lwm2m.Int(-70000), lwm2m.Int(1 << 40),
		lwm2m.Bool(true), lwm2m.Bool(false), lwm2m.Str("coaps://lwm2m.example.net:5684"), lwm2m.Bytes([]byte{0, 1, 2}), lwm2m.FloatValue(2.5)} {
		in := lwm2m.Instance{Object: 1, ID: 0, Resources: []lwm2m.Resource{{ID: 4, Value: v}}}
		got, err := lwm2m.DecodeTLV(in.TLV())
		if err != nil {
			t.Fatal(err)
		}
		back, err := lwm2m.FromTLV(v.Kind, got[0].Children[0].Value)
		if err != nil || back.String() != v.String() {
			t.Errorf("%v came back as %v (%v)", v, back, err)
		}
	}
	if _, err := lwm2m.FromTLV(lwm2m.Integer, []byte{1, 2, 3}); !errors.Is(err, lwm2m.ErrMalformed) {
		t.Error("a 3-byte integer decoded")
	}
	if _, err := lwm2m.FromTLV(lwm2m.Boolean, []byte{2}); !errors.Is(err, lwm2m.ErrMalformed) {
		t.Error("boolean 2 decoded")
	}
}

// The objects a bootstrap server writes come back the same from SenML CBOR
// and SenML JSON.
func TestSenMLRoundTrip(t *testing.T) {
	sec := lwm2m.Security{ServerURI: "coaps://lwm2m.example.net:5684", Mode: lwm2m.ModePSK,
		PublicKeyOrIdentity: []byte("TH1-0001"), SecretKey: []byte{0xde, 0xad, 0xbe, 0xef}, ShortServerID: 101}.Instance(1)
	srv := lwm2m.Server{ShortServerID: 101, Lifetime: 300, Binding: "U"}.Instance(0)
	wlan := lwm2m.WLAN{InterfaceName: "wlan0", Enable: true, SSID: "Office", AuthenticationMode: 1, KeyPhrase: "correct horse"}.Instance(0)
	entries := append(append(sec.Entries(), srv.Entries()...), wlan.Entries()...)
	for _, asCBOR := range []bool{true, false} {
		raw, err := lwm2m.EncodeSenML(entries, asCBOR)
		if err != nil {
			t.Fatal(err)
		}
		got, err := lwm2m.DecodeSenML(raw, asCBOR)
		if err != nil {
			t.Fatalf("cbor=%v: %v", asCBOR, err)
		}
		if len(got) != len(entries) {
			t.Fatalf("cbor=%v: %d entries, want %d", asCBOR, len(got), len(entries))
		}
		for i, e := range entries {
			g := got[i]
			if g.Path.String() != e.Path.String() {
				t.Errorf("cbor=%v: entry %d path %s, want %s", asCBOR, i, g.Path, e.Path)
			}
			if e.Value.Kind == lwm2m.Integer {
				if n, ok := g.Value.AsInt(); !ok || n != e.Value.Int {
					t.Errorf("cbor=%v: %s = %v, want %d", asCBOR, e.Path, g.Value, e.Value.Int)
				}
				continue
			}
			if g.Value.String() != e.Value.String() || (e.Value.Kind == lwm2m.Opaque && !bytes.Equal(g.Value.Bytes, e.Value.Bytes)) {
				t.Errorf("cbor=%v: %s = %v, want %v", asCBOR, e.Path, g.Value, e.Value)
			}
		}
	}
}

// Base names carry forward; a record with two values, a bad path or a
// non-finite number is refused.
func TestSenMLDecode(t *testing.T) {
	got, err := lwm2m.DecodeSenML([]byte(`[{"bn":"/1/0/","n":"1","v":300},{"n":"7","vs":"U"},{"bn":"/0/","n":"1/2","v":0}]`), false)
	if err != nil || len(got) != 3 || got[0].Path.String() != "/1/0/1" || got[1].Path.String() != "/1/0/7" || got[2].Path.String() != "/0/1/2" {
		t.Fatalf("%+v %v", got, err)
	}
	for name, in := range map[string]string{
		"two values":      `[{"n":"/1/0/1","v":1,"vs":"x"}]`,
		"bad path":        `[{"n":"/1/x"}]`,
		"too deep":        `[{"n":"/1/0/1/2/3"}]`,
		"unknown field":   `[{"n":"/1/0/1","zz":1}]`,
		"not an array":    `{"n":"/1"}`,
		"bad base64url":   `[{"n":"/0/1/5","vd":"!!"}]`,
		"trailing data":   `[{"n":"/1"}] []`,
		"leading zero id": `[{"n":"/01/0"}]`,
	} {
		if _, err := lwm2m.DecodeSenML([]byte(in), false); !errors.Is(err, lwm2m.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	if _, err := lwm2m.DecodeSenML([]byte{0xa1, 0x00, 0x01}, true); !errors.Is(err, lwm2m.ErrMalformed) {
		t.Error("a CBOR map, not an array, decoded")
	}
}

func FuzzDecodeTLV(f *testing.F) {
	f.Add(lwm2m.Security{ServerURI: "coaps://x", Mode: lwm2m.ModeCertificate, ShortServerID: 1}.Instance(0).TLV())
	f.Add([]byte{0x86, 0x06, 0x41, 0x00, 0x01, 0x41, 0x01, 0x05})
	f.Add([]byte{0xf8, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		entries, err := lwm2m.DecodeTLV(in)
		if err != nil {
			if !errors.Is(err, lwm2m.ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		// What decodes re-encodes to something that decodes to the same.
		again, err := lwm2m.DecodeTLV(lwm2m.EncodeTLV(nil, entries...))
		if err != nil || !bytes.Equal(lwm2m.EncodeTLV(nil, again...), lwm2m.EncodeTLV(nil, entries...)) {
			t.Fatalf("re-encoding is not stable: %v", err)
		}
	})
}

func FuzzDecodeSenML(f *testing.F) {
	entries := lwm2m.Server{ShortServerID: 1, Lifetime: 60, Binding: "U"}.Instance(0).Entries()
	c, _ := lwm2m.EncodeSenML(entries, true)
	j, _ := lwm2m.EncodeSenML(entries, false)
	f.Add(c, true)
	f.Add(j, false)
	f.Add([]byte(`[{"bn":"/0/0/","n":"5","vd":"3q2-7w"}]`), false)
	f.Fuzz(func(t *testing.T, in []byte, asCBOR bool) {
		got, err := lwm2m.DecodeSenML(in, asCBOR)
		if err != nil {
			if !errors.Is(err, lwm2m.ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		if len(got) > lwm2m.MaxRecords {
			t.Fatalf("%d records", len(got))
		}
		for _, e := range got {
			if len(e.Path.IDs) > 4 {
				t.Fatalf("path %s", e.Path)
			}
		}
	})
}
