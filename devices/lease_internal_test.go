package devices

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"
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
}

func BenchmarkLeaseExpires(b *testing.B) {
	raw, _ := json.Marshal(Lease{Site: "site-042", Addr: netip.MustParseAddr("10.42.3.4"), DeviceID: uuid.New(), Expires: time.Now().UTC()})
	b.Run("scan", func(b *testing.B) {
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
