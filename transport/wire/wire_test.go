package wire_test

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/wire"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sample() wire.EnrollResponse {
	return wire.EnrollResponse{
		DeviceID:      "7b0f6a52-3c1e-4c59-9f39-2d7f0c1a9e11",
		Certificate:   wire.Chain{[]byte{0x30, 0x03, 0x02, 0x01, 0x01}, []byte{0x30, 0x03, 0x02, 0x01, 0x02}},
		CA:            wire.Cert{0x30, 0x03, 0x02, 0x01, 0x03},
		WiFi:          wire.WiFi{SSID: "Office", Security: "wpa2-psk", Passphrase: "correct horse"},
		Network:       wire.Network{Address: "10.20.0.7", PrefixLen: 24, Gateway: "10.20.0.1", DNS: []string{"10.20.0.1"}, NTP: []string{"pool.ntp.org"}},
		Lease:         wire.Lease{Address: "10.20.0.7", ExpiresAt: time.Date(2026, 11, 24, 19, 12, 13, 0, time.UTC)},
		ConfigVersion: 3,
	}
}

// TestGolden pins the wire encoding of an enrollment answer: a change here
// breaks deployed devices. Run with -update after a deliberate change.
func TestGolden(t *testing.T) {
	for _, c := range []struct {
		name string
		f    wire.Format
		text func([]byte) []byte
	}{
		{"enroll_response.json.golden", wire.JSON, func(b []byte) []byte { return append(b, '\n') }},
		{"enroll_response.cbor.hex.golden", wire.CBOR, func(b []byte) []byte { return []byte(hex.EncodeToString(b) + "\n") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw, err := wire.Marshal(c.f, sample())
			if err != nil {
				t.Fatal(err)
			}
			got := c.text(raw)
			path := filepath.Join("testdata", c.name)
			if *update {
				os.WriteFile(path, got, 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("encoding changed:\n got %s\nwant %s", got, want)
			}
			var back wire.EnrollResponse
			if err := wire.Unmarshal(c.f, raw, &back); err != nil || !reflect.DeepEqual(back, sample()) {
				t.Errorf("round trip: %v\n got %+v\nwant %+v", err, back, sample())
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	cases := []struct {
		name string
		f    wire.Format
		in   []byte
	}{
		{"cbor duplicate key", wire.CBOR, []byte{0xa2, 0x61, 'a', 0x01, 0x61, 'a', 0x02}},
		{"cbor indefinite length", wire.CBOR, []byte{0xbf, 0x61, 'a', 0x01, 0xff}},
		{"cbor tag", wire.CBOR, []byte{0xc1, 0x1a, 0x00, 0x00, 0x00, 0x01}},
		{"cbor trailing", wire.CBOR, []byte{0xa0, 0xa0}},
		{"cbor deep nesting", wire.CBOR, bytes.Repeat([]byte{0x81}, 20)},
		{"cbor serial is a number", wire.CBOR, []byte{0xa1, 0x66, 's', 'e', 'r', 'i', 'a', 'l', 0x01}},
		{"json trailing", wire.JSON, []byte(`{} {}`)},
		{"json csr not PEM", wire.JSON, []byte(`{"csr":"MIIB"}`)},
		{"json csr PEM with trailing data", wire.JSON, []byte(`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\ngarbage"}`)},
		{"unsupported format", wire.Format(0), []byte(`{}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r wire.EnrollRequest
			if err := wire.Unmarshal(c.f, c.in, &r); err == nil {
				t.Errorf("decoded %+v", r)
			}
		})
	}
}

func FuzzDecodeEnrollRequest(f *testing.F) {
	seed := wire.EnrollRequest{Serial: "TH1-ABC", ClaimToken: "0123456789ABCDEFGHJK", CSR: []byte{0x30, 0x00}, Model: "TH1"}
	for _, fm := range []wire.Format{wire.CBOR, wire.JSON} {
		b, _ := wire.Marshal(fm, seed)
		f.Add(byte(fm), b)
	}
	f.Add(byte(wire.CBOR), []byte{0xa2, 0x61, 'a', 0x01, 0x61, 'a', 0x02})
	f.Add(byte(wire.JSON), []byte(`{"serial":"x","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"}`))
	f.Fuzz(func(t *testing.T, format byte, data []byte) {
		fm := wire.CBOR
		if format%2 == 0 {
			fm = wire.JSON
		}
		var r wire.EnrollRequest
		if err := wire.Unmarshal(fm, data, &r); err != nil {
			return
		}
		// Whatever decodes must encode and decode to the same request.
		again, err := wire.Marshal(fm, r)
		if err != nil {
			t.Fatalf("re-encode %+v: %v", r, err)
		}
		var r2 wire.EnrollRequest
		if err := wire.Unmarshal(fm, again, &r2); err != nil {
			t.Fatalf("decode re-encoded %q: %v", again, err)
		}
		if !reflect.DeepEqual(normal(r), normal(r2)) {
			t.Fatalf("round trip changed the request:\n%+v\n%+v", r, r2)
		}
	})
}

// normal treats an empty and a nil CSR alike (JSON renders both as "").
func normal(r wire.EnrollRequest) wire.EnrollRequest {
	if len(r.CSR) == 0 {
		r.CSR = nil
	}
	return r
}

// FuzzDecodeDeviceMessages covers the other device-sent bodies: state
// reports (MQTT devices/{id}/state, CoAP /state) and renewal requests, in
// both encodings. Whatever decodes must survive a round trip.
func FuzzDecodeDeviceMessages(f *testing.F) {
	for _, fm := range []wire.Format{wire.CBOR, wire.JSON} {
		b, _ := wire.Marshal(fm, wire.StateReport{ConfigVersion: 3, FirmwareVersion: "1.2.3", Health: "ok"})
		f.Add(byte(fm), byte(0), b)
		b, _ = wire.Marshal(fm, wire.RenewRequest{CSR: []byte{0x30, 0x00}})
		f.Add(byte(fm), byte(1), b)
	}
	f.Add(byte(wire.JSON), byte(0), []byte(`{"config_version":-1}`))
	f.Fuzz(func(t *testing.T, format, kind byte, data []byte) {
		fm := wire.CBOR
		if format%2 == 0 {
			fm = wire.JSON
		}
		roundTrip := func(v, v2 any) {
			if err := wire.Unmarshal(fm, data, v); err != nil {
				return
			}
			again, err := wire.Marshal(fm, v)
			if err != nil {
				t.Fatalf("re-encode %+v: %v", v, err)
			}
			if err := wire.Unmarshal(fm, again, v2); err != nil {
				t.Fatalf("decode re-encoded %q: %v", again, err)
			}
			// Compared as encoded: an empty and an absent CSR are the same message.
			if third, _ := wire.Marshal(fm, v2); !bytes.Equal(again, third) {
				t.Fatalf("round trip changed the message:\n%+v\n%+v", v, v2)
			}
		}
		if kind%2 == 0 {
			roundTrip(&wire.StateReport{}, &wire.StateReport{})
		} else {
			roundTrip(&wire.RenewRequest{}, &wire.RenewRequest{})
		}
	})
}
