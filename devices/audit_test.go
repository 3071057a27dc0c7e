package devices_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices"
)

// tamper opens the store file directly, as an attacker with file access would.
func tamper(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	db.Close()
}

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

func TestAuditChainDetectsTampering(t *testing.T) {
	cases := []struct {
		name string
		edit func(tx *bolt.Tx) error
		want string
	}{
		{"edit an event", func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			var ev map[string]any
			json.Unmarshal(b.Get(seqKey(3)), &ev)
			ev["actor"] = "token:innocent"
			raw, _ := json.Marshal(ev)
			return b.Put(seqKey(3), raw)
		}, "event 3 was modified"},
		{"remove an event", func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit")).Delete(seqKey(3)) }, "event 4 follows event 2"},
		{"remove the newest event", func(tx *bolt.Tx) error { return tx.Bucket([]byte("audit")).Delete(seqKey(5)) }, "should be 5, the log ends at 4"},
		{"edit an event and rehash it", func(tx *bolt.Tx) error {
			b := tx.Bucket([]byte("audit"))
			var ev devices.AuditEvent
			json.Unmarshal(b.Get(seqKey(2)), &ev)
			ev.Target = "someone-else"
			ev.Hash, _ = devices.HashAuditEvent(ev)
			raw, _ := json.Marshal(ev)
			return b.Put(seqKey(2), raw)
		}, "event 3 does not chain to event 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inv.db")
			s, err := devices.Open(path, devices.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				if err := s.AppendAudit(devices.AuditEvent{Actor: "token:x", Action: "test", Target: string(rune('a' + i))}); err != nil {
					t.Fatal(err)
				}
			}
			if n, seq, _, err := s.VerifyAudit(); err != nil || n != 5 || seq != 5 {
				t.Fatalf("intact log: %d events to %d, %v", n, seq, err)
			}
			s.Close()
			tamper(t, path, c.edit)
			s, err = devices.Open(path, devices.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, _, _, err = s.VerifyAudit()
			if !errors.Is(err, devices.ErrAuditTampered) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("verify: %v, want ErrAuditTampered naming %q", err, c.want)
			}
		})
	}
}
