package devices

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ErrAuditTampered is returned when the audit chain does not verify: an
// event was changed, removed or inserted. The message names the event.
var ErrAuditTampered = errors.New("audit log tampered")

// HashAuditEvent is an event's chain hash: SHA-256 over its PrevHash and its
// JSON encoding with Hash empty, in hex.
func HashAuditEvent(ev AuditEvent) (string, error) {
	ev.Hash = ""
	raw, err := json.Marshal(ev)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(ev.PrevHash))
	h.Write(raw)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// AuditVerifier checks an audit chain one event at a time, in order.
type AuditVerifier struct {
	n        int
	lastSeq  uint64
	lastHash string
}

// Add checks the next event.
func (v *AuditVerifier) Add(ev AuditEvent) error {
	if v.n > 0 && ev.Seq != v.lastSeq+1 {
		return fmt.Errorf("%w: event %d follows event %d (events removed or reordered)", ErrAuditTampered, ev.Seq, v.lastSeq)
	}
	if ev.PrevHash != v.lastHash && v.n > 0 {
		return fmt.Errorf("%w: event %d does not chain to event %d (one of them was changed)", ErrAuditTampered, ev.Seq, v.lastSeq)
	}
	want, err := HashAuditEvent(ev)
	if err != nil {
		return err
	}
	if want != ev.Hash {
		return fmt.Errorf("%w: event %d was modified (its hash does not match its content)", ErrAuditTampered, ev.Seq)
	}
	v.n, v.lastSeq, v.lastHash = v.n+1, ev.Seq, ev.Hash
	return nil
}

// Head is the last verified event: count, sequence number and hash.
func (v *AuditVerifier) Head() (n int, seq uint64, hash string) { return v.n, v.lastSeq, v.lastHash }

// VerifyAudit checks the whole stored chain, and that its newest event is the
// recorded head (so removing the newest events is detected too). It returns
// the head: the number of events, the last sequence number and its hash.
func (s *Store) VerifyAudit() (n int, seq uint64, hash string, err error) {
	var v AuditVerifier
	err = s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, raw := c.First(); k != nil; k, raw = c.Next() {
			var ev AuditEvent
			if err := json.Unmarshal(raw, &ev); err != nil {
				return fmt.Errorf("%w: event %d does not decode: %v", ErrAuditTampered, binary.BigEndian.Uint64(k), err)
			}
			if ev.Seq != binary.BigEndian.Uint64(k) {
				return fmt.Errorf("%w: event stored at %d claims sequence %d", ErrAuditTampered, binary.BigEndian.Uint64(k), ev.Seq)
			}
			if err := v.Add(ev); err != nil {
				return err
			}
		}
		head := tx.Bucket(bucketMeta).Get(keyAuditHead)
		n, last, lastHash := v.Head()
		switch {
		case head == nil && n == 0:
			return nil
		case len(head) <= 8:
			return fmt.Errorf("%w: the head record is missing", ErrAuditTampered)
		case binary.BigEndian.Uint64(head[:8]) != last || string(head[8:]) != lastHash:
			return fmt.Errorf("%w: the newest event should be %d, the log ends at %d (events removed at the end)",
				ErrAuditTampered, binary.BigEndian.Uint64(head[:8]), last)
		}
		return nil
	})
	n, seq, hash = v.Head()
	return n, seq, hash, err
}
