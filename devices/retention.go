package devices

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/provisiond/provisiond/devices/kv"
)

// Audit retention. Pruning removes a chain's oldest events and records, per
// chain, an anchor: the sequence, time and hash of the newest event it
// removed. The chain then starts at its anchor instead of at event 1, so
// what is left still verifies (every event still hashes its predecessor's
// hash, the first one the anchor's), and an export taken before pruning
// ends exactly where the anchors begin: the two together verify as one log.
//
//	auditanchor  chain (2B) -> seq (8B) | time (8B) | hash

var bucketAuditAnchor = []byte("auditanchor")

// AuditAnchor is where a pruned chain now starts: its last removed event.
type AuditAnchor struct {
	Chain uint16    `json:"chain"`
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	Hash  string    `json:"hash"`
}

// Anchor seeds the verifier with a chain's anchor: the chain's next event
// must be anchor.Seq+1 and hash to it. Give the anchors before the events.
func (v *AuditVerifier) Anchor(a AuditAnchor) {
	if v.chains == nil {
		v.chains = map[uint16]*chainHead{}
	}
	v.chains[a.Chain] = &chainHead{seq: a.Seq, hash: a.Hash}
}

func readAnchors(tx kv.Tx) ([]AuditAnchor, error) {
	var out []AuditAnchor
	err := tx.Ascend(bucketAuditAnchor, nil, nil, func(k, v []byte) (bool, error) {
		if len(k) != 2 || len(v) < 16 {
			return false, fmt.Errorf("%w: malformed anchor %x", ErrAuditTampered, k)
		}
		out = append(out, AuditAnchor{Chain: binary.BigEndian.Uint16(k), Seq: binary.BigEndian.Uint64(v),
			Time: time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))).UTC(), Hash: string(v[16:])})
		return true, nil
	})
	return out, err
}

// AuditAnchors lists the chains' anchors (none before the first pruning).
func (s *Store) AuditAnchors(ctx context.Context) ([]AuditAnchor, error) {
	var out []AuditAnchor
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		out, err = readAnchors(tx)
		return err
	})
	return out, err
}

// PruneAudit removes the audit events older than before, oldest first, a
// chunk per transaction (each event's log entry and history key, and its
// chain's anchor moved up with it); it returns how many it removed.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int, error) {
	per := kv.PerTx(s.db, 2, 16, 1000) // per event: the log entry and its history key; up to 16 anchors
	cut := before.UnixNano()
	total := 0
	for {
		n := 0
		err := s.db.Update(ctx, func(tx kv.Tx) error {
			n = 0
			type gone struct {
				key []byte
				ev  AuditEvent
			}
			var batch []gone
			chains := map[uint16]bool{}
			err := tx.Ascend(bucketAuditLog, nil, nil, func(k, v []byte) (bool, error) {
				nanos, chain, _, ok := parseAuditKey(k)
				if !ok {
					return false, fmt.Errorf("%w: malformed log key %x", ErrAuditTampered, k)
				}
				if nanos >= cut || len(batch) == per || (!chains[chain] && len(chains) == 16) {
					return false, nil
				}
				var ev AuditEvent
				if err := decodeAuditRecord(v, &ev); err != nil {
					return false, fmt.Errorf("%w: chain %d: an event does not decode: %v", ErrAuditTampered, chain, err)
				}
				chains[chain] = true
				batch = append(batch, gone{key: append([]byte(nil), k...), ev: ev})
				return true, nil
			})
			if err != nil {
				return err
			}
			anchors := map[uint16]chainHead{}
			for _, g := range batch {
				if err := tx.Delete(bucketAuditLog, g.key); err != nil {
					return err
				}
				if g.ev.Target != "" {
					if err := tx.Delete(bucketHistory, append(append([]byte(g.ev.Target), 0), g.key...)); err != nil {
						return err
					}
				}
				nanos, chain, _, _ := parseAuditKey(g.key)
				anchors[chain] = chainHead{seq: g.ev.Seq, nanos: nanos, hash: g.ev.Hash}
			}
			for chain, a := range anchors {
				if err := tx.Put(bucketAuditAnchor, chainKey(chain), a.encode()); err != nil {
					return err
				}
			}
			n = len(batch)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n == 0 {
			return total, nil
		}
	}
}
