package devices

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"time"

	"github.com/provisiond/provisiond/devices/kv"
)

// The audit log is a set of hash chains, not one.
//
// One chain (one head record that every write rewrites) is a key that every
// write transaction touches: on an optimistic engine every two concurrent
// enrollments would conflict there. So an event goes to one of AuditChains
// chains, chosen by its target: a device's events (and a site's) form one
// chain, and two enrollments of different devices meet only when their
// serials hash to the same chain (1 in 256). Each chain has its own head
// (sequence, time, hash of its newest event), so removing a chain's newest
// events is detected as before.
//
//	auditlog   time (8B, ns) | chain (2B) | seq (8B) -> AuditEvent
//	audithead  chain (2B)                     -> seq (8B) | time (8B) | hash
//	history    target \x00 auditlog key       -> ""
//
// The log's keys start with the time, so a scan is the log in time order,
// newest first or oldest first, across chains. Within a chain the key's time
// never goes backwards (a clock stepped back gives the next event the last
// time plus 1 ns), so a chain's events also scan in sequence order and one
// pass verifies every chain. Chain 0 holds the events of a store written
// before there were chains, unchanged (their hashes still verify).
const AuditChains = 256

var (
	bucketAuditLog  = []byte("auditlog")
	bucketAuditHead = []byte("audithead")
	// bucketLegacyAudit held the single chain (sequence -> event) and
	// meta/audit_head its head; New moves them to chain 0.
	bucketLegacyAudit = []byte("audit")
	keyLegacyHead     = []byte("audit_head")
)

// ErrAuditTampered is returned when the audit chain does not verify: an
// event was changed, removed or inserted. The message names the event.
var ErrAuditTampered = errors.New("audit log tampered")

// auditChain is the chain of the events about target.
func auditChain(target string) uint16 {
	h := fnv.New32a()
	h.Write([]byte(target))
	return uint16(h.Sum32()%AuditChains) + 1
}

func auditKey(nanos int64, chain uint16, seq uint64) []byte {
	k := make([]byte, 0, 18)
	k = binary.BigEndian.AppendUint64(k, uint64(nanos))
	k = binary.BigEndian.AppendUint16(k, chain)
	return binary.BigEndian.AppendUint64(k, seq)
}

func parseAuditKey(k []byte) (nanos int64, chain uint16, seq uint64, ok bool) {
	if len(k) != 18 {
		return 0, 0, 0, false
	}
	return int64(binary.BigEndian.Uint64(k)), binary.BigEndian.Uint16(k[8:]), binary.BigEndian.Uint64(k[10:]), true
}

func chainKey(chain uint16) []byte { return binary.BigEndian.AppendUint16(nil, chain) }

// chainHead is a chain's head record.
type chainHead struct {
	seq   uint64
	nanos int64
	hash  string
}

func (h chainHead) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, h.seq)
	b = binary.BigEndian.AppendUint64(b, uint64(h.nanos))
	return append(b, h.hash...)
}

func readHead(tx kv.Tx, chain uint16) (chainHead, bool, error) {
	raw, err := tx.Get(bucketAuditHead, chainKey(chain))
	if err != nil || raw == nil {
		return chainHead{}, false, err
	}
	if len(raw) < 16 {
		return chainHead{}, true, fmt.Errorf("%w: chain %d: the head record is malformed", ErrAuditTampered, chain)
	}
	return chainHead{seq: binary.BigEndian.Uint64(raw), nanos: int64(binary.BigEndian.Uint64(raw[8:])), hash: string(raw[16:])}, true, nil
}

// appendAudit adds ev to its target's chain.
func appendAudit(tx kv.Tx, ev AuditEvent) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	// To the microsecond, in UTC: stored as a number (auditRecord).
	ev.Time = ev.Time.UTC().Truncate(time.Microsecond)
	ev.ID = ""
	ev.Chain = auditChain(ev.Target)
	head, _, err := readHead(tx, ev.Chain)
	if err != nil {
		return err
	}
	ev.Seq, ev.PrevHash = head.seq+1, head.hash
	nanos := max(ev.Time.UnixNano(), head.nanos+1)
	if ev.Hash, err = HashAuditEvent(ev); err != nil {
		return err
	}
	key := auditKey(nanos, ev.Chain, ev.Seq)
	raw, err := encodeAuditEvent(&ev)
	if err != nil {
		return err
	}
	if err := tx.Put(bucketAuditLog, key, raw); err != nil {
		return err
	}
	if ev.Target != "" {
		if err := tx.Put(bucketHistory, append(append([]byte(ev.Target), 0), key...), nil); err != nil {
			return err
		}
	}
	return tx.Put(bucketAuditHead, chainKey(ev.Chain), chainHead{seq: ev.Seq, nanos: nanos, hash: ev.Hash}.encode())
}

// with returns a copy of ev with detail pairs (key, value, ...) added to a
// copy of its Detail: a transaction that may run more than once never
// writes into its caller's event.
func (ev AuditEvent) with(kv ...string) AuditEvent {
	d := make(map[string]string, len(ev.Detail)+len(kv)/2)
	maps.Copy(d, ev.Detail)
	for i := 0; i+1 < len(kv); i += 2 {
		d[kv[i]] = kv[i+1]
	}
	ev.Detail = d
	return ev
}

// HashAuditEvent is an event's chain hash: SHA-256 over its PrevHash and its
// JSON encoding with Hash and ID empty, in hex.
func HashAuditEvent(ev AuditEvent) (string, error) {
	ev.Hash, ev.ID = "", ""
	raw, err := json.Marshal(ev)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(ev.PrevHash))
	h.Write(raw)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// AuditQuery selects a page of the audit log. The log reads newest first
// from Before (exclusive; "" is the newest event), or, when Ascending,
// oldest first after After (exclusive; "" is the oldest). Before and After
// are event IDs.
type AuditQuery struct {
	Before    string
	After     string
	Ascending bool
	Limit     int // default and most 1000
}

// Audit returns a page of the audit log (see AuditQuery).
func (s *Store) Audit(ctx context.Context, q AuditQuery) ([]AuditEvent, error) {
	if q.Limit <= 0 || q.Limit > 1000 {
		q.Limit = 1000
	}
	cursor := q.After
	if !q.Ascending {
		cursor = q.Before
	}
	var from []byte
	if cursor != "" {
		k, err := hex.DecodeString(cursor)
		if _, _, _, ok := parseAuditKey(k); err != nil || !ok {
			return nil, fmt.Errorf("%w: audit cursor %q is not an event ID", ErrInvalid, cursor)
		}
		from = k
	}
	var out []AuditEvent
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		collect := func(k, v []byte) (bool, error) {
			if from != nil && bytes.Equal(k, from) {
				return true, nil // the cursor itself is on the page before
			}
			ev, err := decodeAuditEvent(k, v)
			if err != nil {
				return false, err
			}
			out = append(out, ev)
			return len(out) < q.Limit, nil
		}
		if q.Ascending {
			return tx.Ascend(bucketAuditLog, nil, from, collect)
		}
		return tx.Descend(bucketAuditLog, nil, from, collect)
	})
	return out, err
}

func decodeAuditEvent(k, v []byte) (AuditEvent, error) {
	var ev AuditEvent
	if err := decodeAuditRecord(v, &ev); err != nil {
		return ev, fmt.Errorf("decode audit event %x: %w", k, err)
	}
	ev.ID = hex.EncodeToString(k)
	return ev, nil
}

// History returns the newest audit events about a target (a device serial,
// a site name), at most limit, oldest first.
func (s *Store) History(ctx context.Context, target string, limit int) ([]AuditEvent, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var out []AuditEvent
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		prefix := append([]byte(target), 0)
		err := tx.Descend(bucketHistory, prefix, nil, func(k, _ []byte) (bool, error) {
			key := k[len(prefix):]
			if _, _, _, ok := parseAuditKey(key); !ok {
				return true, nil // a longer target that starts with this one and a 0 byte
			}
			raw, err := tx.Get(bucketAuditLog, key)
			if err != nil || raw == nil {
				return false, err
			}
			ev, err := decodeAuditEvent(key, raw)
			if err != nil {
				return false, err
			}
			out = append(out, ev)
			return len(out) < limit, nil
		})
		slices.Reverse(out)
		return err
	})
	return out, err
}

// AuditVerifier checks audit chains one event at a time, each chain's
// events in order (the log's order: see AuditChains).
type AuditVerifier struct {
	n      int
	chains map[uint16]*chainHead
}

// Add checks the next event.
func (v *AuditVerifier) Add(ev AuditEvent) error {
	if v.chains == nil {
		v.chains = map[uint16]*chainHead{}
	}
	c, seen := v.chains[ev.Chain]
	if !seen && (ev.Seq != 1 || ev.PrevHash != "") {
		return fmt.Errorf("%w: chain %d: starts at event %d (earlier events removed)", ErrAuditTampered, ev.Chain, ev.Seq)
	}
	if seen && ev.Seq != c.seq+1 {
		return fmt.Errorf("%w: chain %d: event %d follows event %d (events removed or reordered)", ErrAuditTampered, ev.Chain, ev.Seq, c.seq)
	}
	if seen && ev.PrevHash != c.hash {
		return fmt.Errorf("%w: chain %d: event %d does not chain to event %d (one of them was changed)", ErrAuditTampered, ev.Chain, ev.Seq, c.seq)
	}
	want, err := HashAuditEvent(ev)
	if err != nil {
		return err
	}
	if want != ev.Hash {
		return fmt.Errorf("%w: chain %d: event %d was modified (its hash does not match its content)", ErrAuditTampered, ev.Chain, ev.Seq)
	}
	if !seen {
		c = &chainHead{}
		v.chains[ev.Chain] = c
	}
	c.seq, c.hash = ev.Seq, ev.Hash
	v.n++
	return nil
}

// AuditHead sums up a verified log: its events, its chains, and one hash
// over every chain's newest event. Record Hash elsewhere to detect a later
// rewrite of the whole log.
type AuditHead struct {
	Events int    `json:"events"`
	Chains int    `json:"chains"`
	Hash   string `json:"hash"`
}

// Head is what the verifier has seen so far.
func (v *AuditVerifier) Head() AuditHead {
	ids := make([]uint16, 0, len(v.chains))
	for id := range v.chains {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		c := v.chains[id]
		fmt.Fprintf(h, "%d:%d:%s\n", id, c.seq, c.hash)
	}
	head := AuditHead{Events: v.n, Chains: len(ids)}
	if len(ids) > 0 { // pruning keeps it: anchored chains count with their anchors
		head.Hash = hex.EncodeToString(h.Sum(nil))
	}
	return head
}

// VerifyAudit checks every stored chain, and that each chain's newest event
// is its recorded head (so removing the newest events is detected too).
func (s *Store) VerifyAudit(ctx context.Context) (AuditHead, error) {
	var v AuditVerifier
	err := s.db.View(ctx, func(tx kv.Tx) error {
		v = AuditVerifier{}
		anchors, err := readAnchors(tx)
		if err != nil {
			return err
		}
		for _, a := range anchors { // pruned chains start at their anchors
			v.Anchor(a)
		}
		err = tx.Ascend(bucketAuditLog, nil, nil, func(k, raw []byte) (bool, error) {
			_, chain, seq, ok := parseAuditKey(k)
			if !ok {
				return false, fmt.Errorf("%w: malformed log key %x", ErrAuditTampered, k)
			}
			var ev AuditEvent
			if err := decodeAuditRecord(raw, &ev); err != nil {
				return false, fmt.Errorf("%w: chain %d: event %d does not decode: %v", ErrAuditTampered, chain, seq, err)
			}
			if ev.Chain != chain || ev.Seq != seq {
				return false, fmt.Errorf("%w: chain %d: event stored as %d claims chain %d, sequence %d", ErrAuditTampered, chain, seq, ev.Chain, ev.Seq)
			}
			return true, v.Add(ev)
		})
		if err != nil {
			return err
		}
		heads := map[uint16]bool{}
		err = tx.Ascend(bucketAuditHead, nil, nil, func(k, raw []byte) (bool, error) {
			if len(k) != 2 || len(raw) < 16 {
				return false, fmt.Errorf("%w: malformed head record %x", ErrAuditTampered, k)
			}
			chain := binary.BigEndian.Uint16(k)
			heads[chain] = true
			want := chainHead{seq: binary.BigEndian.Uint64(raw), hash: string(raw[16:])}
			got, ok := v.chains[chain]
			switch {
			case !ok:
				return false, fmt.Errorf("%w: chain %d: the newest event should be %d, the chain is gone (events removed at the end)", ErrAuditTampered, chain, want.seq)
			case got.seq != want.seq || got.hash != want.hash:
				return false, fmt.Errorf("%w: chain %d: the newest event should be %d, the log ends at %d (events removed at the end)",
					ErrAuditTampered, chain, want.seq, got.seq)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for chain := range v.chains {
			if !heads[chain] {
				return fmt.Errorf("%w: chain %d: the head record is missing", ErrAuditTampered, chain)
			}
		}
		return nil
	})
	return v.Head(), err
}

// migrateAudit moves a store's single chain (the layout before chains) to
// chain 0 of the log, oldest first, in transactions the engine takes; the
// events are not changed, so their hashes verify as they did. Each chunk
// deletes what it moved, so a crash part-way resumes where it stopped.
func migrateAudit(ctx context.Context, db kv.DB) error {
	per := kv.PerTx(db, 4, 2, auditMoveChunk) // per event: the log, history out and in, the old key
	for {
		done := false
		err := db.Update(ctx, func(tx kv.Tx) error {
			last := chainHead{}
			if err := tx.Descend(bucketAuditLog, nil, nil, func(k, _ []byte) (bool, error) {
				last.nanos, _, last.seq, _ = parseAuditKey(k)
				return false, nil
			}); err != nil {
				return err
			}
			type moved struct {
				key []byte
				ev  AuditEvent
				raw []byte
			}
			var batch []moved
			err := tx.Ascend(bucketLegacyAudit, nil, nil, func(k, v []byte) (bool, error) {
				var ev AuditEvent
				if err := json.Unmarshal(v, &ev); err != nil {
					return false, fmt.Errorf("%w: event %x does not decode: %v", ErrAuditTampered, k, err)
				}
				batch = append(batch, moved{key: bytes.Clone(k), ev: ev, raw: bytes.Clone(v)})
				return len(batch) < per, nil
			})
			if err != nil {
				return err
			}
			for _, m := range batch {
				nanos := max(m.ev.Time.UnixNano(), last.nanos+1)
				key := auditKey(nanos, 0, binary.BigEndian.Uint64(m.key))
				if err := tx.Put(bucketAuditLog, key, m.raw); err != nil {
					return err
				}
				if m.ev.Target != "" {
					old := append(append([]byte(m.ev.Target), 0), m.key...)
					if err := tx.Delete(bucketHistory, old); err != nil {
						return err
					}
					if err := tx.Put(bucketHistory, append(append([]byte(m.ev.Target), 0), key...), nil); err != nil {
						return err
					}
				}
				if err := tx.Delete(bucketLegacyAudit, m.key); err != nil {
					return err
				}
				last.nanos = nanos
			}
			if len(batch) == per {
				return nil
			}
			// Everything moved: the old head becomes chain 0's.
			done = true
			head, err := tx.Get(bucketMeta, keyLegacyHead)
			if err != nil || head == nil {
				return err
			}
			if len(head) > 8 {
				h := chainHead{seq: binary.BigEndian.Uint64(head), nanos: last.nanos, hash: string(head[8:])}
				if err := tx.Put(bucketAuditHead, chainKey(0), h.encode()); err != nil {
					return err
				}
			}
			return tx.Delete(bucketMeta, keyLegacyHead)
		})
		if err != nil {
			return fmt.Errorf("move the audit log to chains: %w", err)
		}
		if done {
			return nil
		}
	}
}

// auditMoveChunk is the number of events moved per transaction where the
// engine has no bound (a variable so that tests can make chunks small).
var auditMoveChunk = 10_000

// auditMigrationDue reports whether the store still has the single-chain
// layout.
func auditMigrationDue(tx kv.Tx) (bool, error) {
	head, err := tx.Get(bucketMeta, keyLegacyHead)
	if err != nil || head != nil {
		return head != nil, err
	}
	due := false
	err = tx.Ascend(bucketLegacyAudit, nil, nil, func(_, _ []byte) (bool, error) {
		due = true
		return false, nil
	})
	return due, err
}
