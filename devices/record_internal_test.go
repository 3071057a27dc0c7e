package devices

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"maps"
	"math/big"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
)

// fullDevice has every field set, times with nanoseconds.
func fullDevice() Device {
	t := func(s int) time.Time { return time.Date(2026, 11, 30, 9, 0, s, 123456789, time.UTC) }
	id := uuid.New()
	return Device{ID: id, Serial: "P-0001", Model: "TH1", BatchID: uuid.NewString(), Site: "hq", State: StateProvisioned,
		TokenHash: make([]byte, 32), ClaimCodeHash: []byte{1, 2, 3}, FactoryCA: "ca1", BootstrapPSK: "sealed:a", LwM2MPSK: "sealed:b",
		Rebootstrap: true, WiFiPSK: "sealed:c", FirmwareVersion: "1.2.3", FirmwarePin: "1.2.4", MAC: "02:00:5e:10:00:01",
		CertSerial: "0a1b", CertDER: []byte{0x30, 0x82, 1, 2}, PublicKeyHash: make([]byte, 32), CertNotAfter: t(1),
		PrevCertSerial: "09", RenewedAt: t(2), Lease: &Lease{Site: "hq", Addr: netip.MustParseAddr("10.0.0.7"), DeviceID: id, Expires: t(3)},
		ConfigVersion: 7, Override: &ConfigOverride{SSID: "x", Security: SecurityWPA2PSK, Passphrase: "sealed:d",
			DNS: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, NTP: []string{"ntp"}},
		AppliedConfigVersion: 6, Health: "ok", LastSeen: t(4), ProvisionedAt: t(5), CreatedAt: t(6), UpdatedAt: t(7), Rev: 9}
}

// A device record survives CBOR exactly (its times rounded to the
// microsecond by encodeDevice, in the caller's copy too), is smaller than
// its JSON, and a record written as JSON before still reads.
func TestDeviceRecordEncoding(t *testing.T) {
	other := fullDevice()
	other.Lease.Site = "old-site" // a lease in another site than the device's: kept whole
	odd := fullDevice()
	odd.BatchID, odd.State = "batch-7", State("quarantined") // no UUID, no known state: kept as text
	upper := fullDevice()
	upper.BatchID = strings.ToUpper(upper.BatchID) // a UUID, but not in canonical form
	for name, d := range map[string]Device{"every field": fullDevice(), "lease of another site": other,
		"empty": {ID: uuid.New(), Serial: "S", CreatedAt: time.Now().UTC()}, "batch and state as text": odd,
		"upper-case batch": upper} {
		lease := d.Lease
		raw, err := encodeDevice(&d)
		if err != nil {
			t.Fatal(err)
		}
		if d.Lease != lease {
			t.Errorf("%s: encodeDevice left the caller another lease", name)
		}
		var back Device
		if err := decodeDevice(raw, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, d) {
			t.Errorf("%s: CBOR round trip:\n got %+v\nwant %+v", name, back, d)
		}
		js, _ := json.Marshal(d)
		var old Device
		if err := decodeDevice(js, &old); err != nil || !reflect.DeepEqual(old, d) {
			t.Errorf("%s: a JSON record: %v\n got %+v\nwant %+v", name, err, old, d)
		}
		if d.CreatedAt.Nanosecond()%1000 != 0 || d.CreatedAt.Location() != time.UTC {
			t.Errorf("%s: encodeDevice left CreatedAt %v", name, d.CreatedAt)
		}
		if len(raw) >= len(js) {
			t.Errorf("%s: CBOR %d bytes, JSON %d", name, len(raw), len(js))
		}
		var stored map[int]cbor.RawMessage
		if err := recordDec.Unmarshal(raw, &stored); err != nil {
			t.Fatal(err)
		}
		_, batchBytes := stored[34]
		stateCode := len(stored[6]) > 0 && stored[6][0]>>5 == 0
		if batchBytes != (name == "every field" || name == "lease of another site") ||
			stateCode != (name != "empty" && name != "batch and state as text") {
			t.Errorf("%s: batch as bytes %v, state as a number %v", name, batchBytes, stateCode)
		}
		// A reader from before this layout (State as text) refuses a
		// record that leaves anything out, rather than take it for whole.
		var older Device
		if err := recordDec.Unmarshal(raw, &older); (err == nil) != !stateCode {
			t.Errorf("%s: an older reader: %v", name, err)
		}
		t.Logf("%s: CBOR %d bytes, JSON %d", name, len(raw), len(js))
	}
}

// certDevice is fullDevice with a certificate expiring at notAfter, and its
// facts as enrollment records them.
func certDevice(t testing.TB, notAfter time.Time) Device {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: new(big.Int).SetBytes([]byte{0x0a, 0xbc, 0xde, 0xf0, 0x01, 0x7f, 0x33, 0x81, 0x9c, 0x12, 0x44, 0xe0, 0x5d, 0x61, 0x02, 0xaa}),
		Subject: pkix.Name{CommonName: "dev"}, NotBefore: notAfter.AddDate(-1, 0, 0), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	keyHash := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	d := fullDevice()
	d.CertSerial, d.CertDER, d.PublicKeyHash, d.CertNotAfter = fmt.Sprintf("%x", leaf.SerialNumber), der, keyHash[:], leaf.NotAfter
	return d
}

// A record whose certificate facts are its certificate's (as enrollment
// and renewal set them) does not store them, and reads them back from the
// certificate; one whose facts differ keeps its own.
func TestDeviceRecordCertFacts(t *testing.T) {
	for _, notAfter := range []time.Time{time.Date(2036, 1, 2, 3, 4, 5, 0, time.UTC), time.Date(2051, 1, 2, 3, 4, 5, 0, time.UTC)} { // UTCTime, GeneralizedTime
		d := certDevice(t, notAfter)
		mismatched := d
		mismatched.CertSerial = "ff"
		// A state without a number keeps the record whole, for older
		// readers (deviceRecord).
		textState := d
		textState.State = "quarantined"
		for name, want := range map[string]Device{"facts": d, "mismatched": mismatched, "text state": textState} {
			raw, err := encodeDevice(&want)
			if err != nil {
				t.Fatal(err)
			}
			var stored map[int]cbor.RawMessage
			if err := recordDec.Unmarshal(raw, &stored); err != nil {
				t.Fatal(err)
			}
			_, hasSerial := stored[17]
			if _, facts := stored[33]; facts == hasSerial || facts != (name == "facts") {
				t.Errorf("%s, %v: stored keys %v", name, notAfter, slices.Sorted(maps.Keys(stored)))
			}
			var back Device
			if err := decodeDevice(raw, &back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, want) {
				t.Errorf("%s, %v: round trip:\n got %+v\nwant %+v", name, notAfter, back, want)
			}
		}
	}
}

// BenchmarkDecodeDevice reads a provisioned device's record whose
// certificate serial, key hash and NotAfter are taken from its certificate
// (as enrollment stores them), against one that stores them.
func BenchmarkDecodeDevice(b *testing.B) {
	d := certDevice(b, time.Now().AddDate(0, 3, 0))
	stored := d
	stored.CertSerial = "ff" // not the certificate's: stored
	for name, x := range map[string]Device{"derived": d, "stored": stored} {
		raw, err := encodeDevice(&x)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				var back Device
				if err := decodeDevice(raw, &back); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A store holding JSON device records (written before CBOR) reads them,
// finds them by serial and rewrites them in CBOR when they change.
func TestJSONDeviceRecordsStillRead(t *testing.T) {
	ctx := context.Background()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: Buckets})
	if err != nil {
		t.Fatal(err)
	}
	d := fullDevice()
	d.Lease = nil
	js, _ := json.Marshal(d)
	if err := db.Update(ctx, func(tx kv.Tx) error {
		if err := tx.Put(bucketDevices, d.ID[:], js); err != nil {
			return err
		}
		return tx.Put(bucketSerials, []byte(d.Serial), d.ID[:])
	}); err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.DeviceBySerial(ctx, d.Serial)
	want := d
	roundTimes(&want) // times are kept to the microsecond
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("a JSON record: %v\n got %+v\nwant %+v", err, got, want)
	}
	if ds, err := s.DevicesByMAC(ctx, d.MAC); err != nil || len(ds) != 1 {
		t.Fatalf("the index built over a JSON record: %v %v", ds, err)
	}
	if _, err := s.UpdateDevice(ctx, d.ID, func(x *Device) (*AuditEvent, error) { x.Health = "changed"; return nil, nil }); err != nil {
		t.Fatal(err)
	}
	var raw []byte
	db.View(ctx, func(tx kv.Tx) error { raw, err = tx.Get(bucketDevices, d.ID[:]); return err })
	if len(raw) == 0 || raw[0] == '{' || len(raw) >= len(js) {
		t.Fatalf("the changed record was not rewritten in CBOR: %q", raw)
	}
}

// An audit event survives CBOR with its hash verifying, and a chain whose
// older events are JSON and CBOR with text times and hashes (both written
// before) and newer ones CBOR with numbers and bytes verifies.
func TestAuditRecordEncoding(t *testing.T) {
	ctx := context.Background()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: Buckets})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ev := AuditEvent{Time: time.Date(2026, 11, 30, 9, 0, 0, 123456789, time.UTC), Actor: "device:P-1", Action: "device.enroll",
		Target: "P-1", Source: "192.0.2.1:5683", Detail: map[string]string{"transport": "coap", "site": "hq",
			"device_id": uuid.NewString(), "cert_serial": "3a9f00c4e1d2b7a6958473625140f0e1"}}
	// Two events stored as JSON, as a store written before CBOR holds them,
	// then one as the first CBOR encoding stored them (times and hashes as
	// text), all with nanoseconds.
	var oldCBOR int
	for i := range 3 {
		if err := db.Update(ctx, func(tx kv.Tx) error {
			x := ev
			x.Chain = auditChain(x.Target)
			head, _, err := readHead(tx, x.Chain)
			if err != nil {
				return err
			}
			x.Seq, x.PrevHash = head.seq+1, head.hash
			nanos := max(x.Time.UnixNano(), head.nanos+1)
			x.Hash, _ = HashAuditEvent(x)
			if i == 2 {
				raw, err := recordEnc.Marshal(&x)
				if err != nil {
					return err
				}
				oldCBOR = len(raw)
				if err := tx.Put(bucketAuditLog, auditKey(nanos, x.Chain, x.Seq), raw); err != nil {
					return err
				}
			} else if err := putJSON(tx, bucketAuditLog, auditKey(nanos, x.Chain, x.Seq), x); err != nil {
				return err
			}
			return tx.Put(bucketAuditHead, chainKey(x.Chain), chainHead{seq: x.Seq, nanos: nanos, hash: x.Hash}.encode())
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AppendAudit(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if _, err := s.VerifyAudit(ctx); err != nil {
		t.Fatalf("a chain of JSON, then text CBOR, then CBOR events: %v", err)
	}
	h, err := s.History(ctx, "P-1", 10)
	if err != nil || len(h) != 1 || h[0].Seq != 4 || !reflect.DeepEqual(h[0].Detail, ev.Detail) || !h[0].Time.Equal(ev.Time.Truncate(time.Microsecond)) {
		t.Fatalf("history (the earlier events were stored without theirs): %+v %v", h, err)
	}
	if h[0].Actor != ev.Actor || h[0].Target != ev.Target {
		t.Fatalf("a device's own event read back as actor %q, target %q", h[0].Actor, h[0].Target)
	}
	if got, err := HashAuditEvent(h[0]); err != nil || got != h[0].Hash {
		t.Fatalf("the event as read hashes to %s, stored %s (%v)", got, h[0].Hash, err)
	}
	raw, _ := encodeAuditEvent(&h[0])
	js, _ := json.Marshal(h[0])
	if raw[0] == '{' || len(raw) >= len(js) || len(raw) > oldCBOR-60 {
		t.Fatalf("CBOR %d bytes, JSON %d, text CBOR %d", len(raw), len(js), oldCBOR)
	}
	t.Logf("an event: CBOR %d bytes, text CBOR %d, JSON %d", len(raw), oldCBOR, len(js))
	// Hashes that are not lower-case hex, and times not in whole
	// microseconds or not in UTC, are stored as they are.
	for _, x := range []AuditEvent{
		{Seq: 1, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), PrevHash: "ABCD", Hash: "not hex"},
		{Seq: 2, Time: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.FixedZone("X", 3600)), PrevHash: "", Hash: "00ff"},
		{Seq: 3, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), PrevHash: "00", Hash: "0a0b0c"},
		// Actors: a device acting on another target, an operator, none.
		{Seq: 4, Actor: "device:P-1", Target: "P-2"},
		{Seq: 5, Actor: "token:abc", Target: "P-1"},
		{Seq: 6, Actor: "", Target: "P-1"},
		{Seq: 7, Actor: "device:", Target: ""},
		// Details that look like a UUID or hex but are not in the form
		// stored as bytes stay text.
		{Seq: 8, Detail: map[string]string{"a": strings.ToUpper(uuid.NewString()), "b": "ABCD", "c": "abc", "d": "ab", "e": "",
			"f": "1234", "g": "{" + uuid.NewString() + "}", "h": uuid.NewString(), "i": "00000000", "j": "héllo"}},
		// Actions and detail keys in the codebooks and not.
		{Seq: 9, Action: "lease.renew", Detail: map[string]string{"site": "hq", "address": "10.0.0.7", "zone": "b", "3": "x"}},
		{Seq: 10, Action: "site.create", Detail: map[string]string{"transport": "coap"}},
		{Seq: 11, Action: "device.enroll", Detail: map[string]string{}},
	} {
		raw, err := encodeAuditEvent(&x)
		var back AuditEvent
		if err == nil {
			err = decodeAuditRecord(raw, &back)
		}
		if x.Detail != nil && len(x.Detail) == 0 {
			x.Detail = nil // an empty detail is not stored
		}
		xj, _ := json.Marshal(x)
		bj, _ := json.Marshal(back)
		if err != nil || string(xj) != string(bj) {
			t.Errorf("event %d: %v\n got %s\nwant %s", x.Seq, err, bj, xj)
		}
	}
}

// A stored event with a code no codebook has is an error, not a guess.
func TestAuditRecordUnknownCode(t *testing.T) {
	for name, rec := range map[string]map[int]any{
		"action":     {2: 1, 5: 200, 6: "P-1"},
		"detail key": {2: 1, 5: 3, 6: "P-1", 8: map[any]string{uint64(99): "x"}},
	} {
		raw, err := recordEnc.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var ev AuditEvent
		if err := decodeAuditRecord(raw, &ev); err == nil {
			t.Errorf("%s: read as %+v", name, ev)
		}
	}
}
