package devices

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
)

func TestLeaseExpires(t *testing.T) {
	exp := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	raw, _ := json.Marshal(Lease{Site: `a "expires":"x"`, Addr: netip.MustParseAddr("10.0.0.2"), DeviceID: uuid.New(), Expires: exp})
	for name, v := range map[string][]byte{
		"as written":         raw,
		"other field order":  []byte(`{"expires":"2026-11-23T10:00:00Z","site":"a"}`),
		"spaced, decoded":    []byte(`{"site":"a", "expires": "2026-11-23T10:00:00Z"}`),
		"fractional seconds": []byte(`{"expires":"2026-11-23T10:00:00.000Z"}`),
	} {
		got, err := leaseExpires(v)
		if err != nil || !got.Equal(exp) {
			t.Errorf("%s: %v %v, want %v", name, got, err, exp)
		}
	}
	if _, err := leaseExpires([]byte(`{"expires": 12`)); err == nil {
		t.Error("broken record: no error")
	}
	if _, err := leaseExpires([]byte{0xa2, 0x01}); err == nil {
		t.Error("broken CBOR record: no error")
	}
}

// A lease is stored as its device and expiry under a key naming the site
// and address, and reads back whole; a JSON lease stored before still reads.
func TestLeaseRecord(t *testing.T) {
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: Buckets})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := Lease{Site: "hq", Addr: netip.MustParseAddr("10.0.0.7"), DeviceID: uuid.New(), Expires: time.Date(2026, 11, 30, 12, 0, 5, 0, time.UTC)}
	old := Lease{Site: "hq", Addr: netip.MustParseAddr("10.0.0.8"), DeviceID: uuid.New(), Expires: l.Expires.Add(time.Hour)}
	err = db.Update(context.Background(), func(tx kv.Tx) error {
		if err := putLease(tx, l); err != nil {
			return err
		}
		return putJSON(tx, bucketLeases, leaseKey(old.Site, old.Addr), old)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(context.Background(), func(tx kv.Tx) error {
		raw, err := kv.Peek(tx, bucketLeases, leaseKey(l.Site, l.Addr))
		if err != nil {
			return err
		}
		if len(raw) > 30 {
			t.Errorf("stored lease is %d bytes: %x", len(raw), raw)
		}
		if exp, err := leaseExpires(raw); err != nil || !exp.Equal(l.Expires) {
			t.Errorf("leaseExpires: %v %v, want %v", exp, err, l.Expires)
		}
		for _, want := range []Lease{l, old} {
			got, ok, err := getLease(tx, want.Site, want.Addr)
			if err != nil || !ok || got != want {
				t.Errorf("getLease: %+v %v %v, want %+v", got, ok, err, want)
			}
		}
		if _, ok, err := getLease(tx, "hq", netip.MustParseAddr("10.0.0.9")); ok || err != nil {
			t.Errorf("a free address: %v %v", ok, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func BenchmarkLeaseExpires(b *testing.B) {
	raw, _ := json.Marshal(Lease{Site: "site-042", Addr: netip.MustParseAddr("10.42.3.4"), DeviceID: uuid.New(), Expires: time.Now().UTC()})
	stored, _ := recordEnc.Marshal(leaseRecord{DeviceID: uuid.New(), Expires: time.Now().Unix()})
	b.Run("stored", func(b *testing.B) {
		for b.Loop() {
			if _, err := leaseExpires(stored); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			if _, err := leaseExpires(raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			var l Lease
			if err := json.Unmarshal(raw, &l); err != nil {
				b.Fatal(err)
			}
		}
	})
}
