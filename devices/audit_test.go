package devices_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
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

// eventKey finds the log key of a chain's event by its sequence number.
func eventKey(t *testing.T, tx *bolt.Tx, chain uint16, seq uint64) []byte {
	t.Helper()
	c := tx.Bucket([]byte("auditlog")).Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if binary.BigEndian.Uint16(k[8:]) == chain && binary.BigEndian.Uint64(k[10:]) == seq {
			return append([]byte(nil), k...)
		}
	}
	t.Fatalf("no event %d in chain %d", seq, chain)
	return nil
}

func TestAuditChainDetectsTampering(t *testing.T) {
	var chain uint16 // of target "dev-1", read back from the intact log
	cases := []struct {
		name string
		edit func(t *testing.T, tx *bolt.Tx) error
		want string
	}{
		{"edit an event", func(t *testing.T, tx *bolt.Tx) error {
			b := tx.Bucket([]byte("auditlog"))
			k := eventKey(t, tx, chain, 3)
			ev, err := devices.DecodeAuditRecord(b.Get(k))
			if err != nil {
				t.Fatal(err)
			}
			ev.Actor = "token:innocent"
			raw, _ := devices.EncodeAuditRecord(ev)
			return b.Put(k, raw)
		}, "event 3 was modified"},
		{"remove an event", func(t *testing.T, tx *bolt.Tx) error {
			return tx.Bucket([]byte("auditlog")).Delete(eventKey(t, tx, chain, 3))
		}, "event 4 follows event 2"},
		{"remove the newest event", func(t *testing.T, tx *bolt.Tx) error {
			return tx.Bucket([]byte("auditlog")).Delete(eventKey(t, tx, chain, 5))
		}, "should be 5, the log ends at 4"},
		{"remove a whole chain", func(t *testing.T, tx *bolt.Tx) error {
			for seq := uint64(1); seq <= 5; seq++ {
				if err := tx.Bucket([]byte("auditlog")).Delete(eventKey(t, tx, chain, seq)); err != nil {
					return err
				}
			}
			return nil
		}, "the chain is gone"},
		{"remove a chain's head", func(t *testing.T, tx *bolt.Tx) error {
			return tx.Bucket([]byte("audithead")).Delete(binary.BigEndian.AppendUint16(nil, chain))
		}, "the head record is missing"},
		{"edit an event and rehash it", func(t *testing.T, tx *bolt.Tx) error {
			b := tx.Bucket([]byte("auditlog"))
			k := eventKey(t, tx, chain, 2)
			ev, err := devices.DecodeAuditRecord(b.Get(k))
			if err != nil {
				t.Fatal(err)
			}
			ev.Target = "someone-else"
			ev.Hash, _ = devices.HashAuditEvent(ev)
			raw, _ := devices.EncodeAuditRecord(ev)
			return b.Put(k, raw)
		}, "event 3 does not chain to event 2"},
		{"move an event to another chain", func(t *testing.T, tx *bolt.Tx) error {
			b := tx.Bucket([]byte("auditlog"))
			k := eventKey(t, tx, chain, 5)
			v := append([]byte(nil), b.Get(k)...)
			moved := append([]byte(nil), k...)
			binary.BigEndian.PutUint16(moved[8:], chain%devices.AuditChains+1)
			if err := b.Delete(k); err != nil {
				return err
			}
			return b.Put(moved, v)
		}, "claims chain"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "inv.db")
			s, err := openPath(path, boltkv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				// Five events of one chain between events of others.
				for _, target := range []string{"dev-1", fmt.Sprintf("other-%d", i)} {
					if err := s.AppendAudit(ctx, devices.AuditEvent{Actor: "token:x", Action: "test", Target: target}); err != nil {
						t.Fatal(err)
					}
				}
			}
			h, err := s.History(ctx, "dev-1", 10)
			if err != nil || len(h) != 5 || h[0].Seq != 1 || h[4].Seq != 5 {
				t.Fatalf("history of dev-1: %+v, %v", h, err)
			}
			chain = h[0].Chain
			if head, err := s.VerifyAudit(ctx); err != nil || head.Events != 10 || head.Chains < 2 {
				t.Fatalf("intact log: %+v, %v", head, err)
			}
			s.Close()
			tamper(t, path, func(tx *bolt.Tx) error { return c.edit(t, tx) })
			s, err = openPath(path, boltkv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.VerifyAudit(ctx)
			if !errors.Is(err, devices.ErrAuditTampered) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("verify: %v, want ErrAuditTampered naming %q", err, c.want)
			}
		})
	}
}

func TestHistoryIsTheNewest(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for i := range 60 {
		if err := s.AppendAudit(ctx, devices.AuditEvent{Action: fmt.Sprintf("step-%02d", i), Target: "dev-1"}); err != nil {
			t.Fatal(err)
		}
		if err := s.AppendAudit(ctx, devices.AuditEvent{Action: "noise", Target: "dev-10"}); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.History(ctx, "dev-1", 50)
	if err != nil || len(h) != 50 {
		t.Fatalf("history: %d events, %v", len(h), err)
	}
	if h[0].Action != "step-10" || h[49].Action != "step-59" {
		t.Fatalf("history of 50 runs %s .. %s, want the newest: step-10 .. step-59, oldest first", h[0].Action, h[49].Action)
	}
}

func TestAuditPagesNewestFirst(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	for i := range 25 {
		if err := s.AppendAudit(ctx, devices.AuditEvent{Action: fmt.Sprintf("e%02d", i), Target: fmt.Sprintf("t%d", i%7)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for before := ""; ; {
		page, err := s.Audit(ctx, devices.AuditQuery{Before: before, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page {
			got = append(got, ev.Action)
		}
		if len(page) < 10 {
			break
		}
		before = page[len(page)-1].ID
	}
	if len(got) != 25 || got[0] != "e24" || got[24] != "e00" {
		t.Fatalf("newest-first pages: %v", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] >= got[i-1] {
			t.Fatalf("not newest first at %d: %v", i, got)
		}
	}
	asc, err := s.Audit(ctx, devices.AuditQuery{Ascending: true, Limit: 5})
	if err != nil || len(asc) != 5 || asc[0].Action != "e00" {
		t.Fatalf("oldest first: %+v, %v", asc, err)
	}
	rest, err := s.Audit(ctx, devices.AuditQuery{Ascending: true, After: asc[4].ID})
	if err != nil || len(rest) != 20 || rest[0].Action != "e05" {
		t.Fatalf("after %s: %d events, %v", asc[4].ID, len(rest), err)
	}
	if _, err := s.Audit(ctx, devices.AuditQuery{Before: "not-an-id"}); !errors.Is(err, devices.ErrInvalid) {
		t.Fatalf("bad cursor: %v, want ErrInvalid", err)
	}
}

// TestAuditOfOlderStoreMoved writes the layout of a store from before audit
// chains (one chain: sequence -> event, one head), opens it, and checks that
// the log was moved to chain 0 unchanged: it verifies, the device history
// finds its events, and new events go on in chains.
func TestAuditOfOlderStoreMoved(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inv.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	start := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	var prev string
	err = db.Update(func(tx *bolt.Tx) error {
		audit, _ := tx.CreateBucket([]byte("audit"))
		hist, _ := tx.CreateBucket([]byte("history"))
		meta, _ := tx.CreateBucket([]byte("meta"))
		for i := 1; i <= n; i++ {
			// The clock stepped back once: event times are not in order.
			at := start.Add(time.Duration(i) * time.Second)
			if i == 20 {
				at = start
			}
			ev := devices.AuditEvent{Seq: uint64(i), Time: at, Actor: "system", Action: "old", Target: fmt.Sprintf("dev-%d", i%3), PrevHash: prev}
			ev.Hash, _ = devices.HashAuditEvent(ev)
			prev = ev.Hash
			raw, _ := json.Marshal(ev)
			if strings.Contains(string(raw), "chain") || strings.Contains(string(raw), `"id"`) {
				t.Fatalf("an old event's JSON must not change: %s", raw)
			}
			audit.Put(seqKey(uint64(i)), raw)
			hist.Put(append(append([]byte(ev.Target), 0), seqKey(uint64(i))...), nil)
		}
		return meta.Put([]byte("audit_head"), append(seqKey(n), prev...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	kdb, err := boltkv.Open(path, boltkv.Options{Buckets: devices.Buckets})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := devices.Migrations(ctx, kdb); err != nil || !slices.Contains(m, "audit chains") {
		t.Fatalf("migrations due: %v, %v", m, err)
	}
	defer devices.SetAuditMoveChunk(7)() // several chunks, the last one short
	s, err := devices.New(ctx, kdb)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if m, err := devices.Migrations(ctx, kdb); err != nil || len(m) != 0 {
		t.Fatalf("migrations due after New: %v, %v", m, err)
	}
	head, err := s.VerifyAudit(ctx)
	if err != nil || head.Events != n || head.Chains != 1 {
		t.Fatalf("moved log: %+v, %v", head, err)
	}
	h, err := s.History(ctx, "dev-1", 100)
	if err != nil || len(h) != 14 || h[0].Seq != 1 || h[13].Seq != 40 {
		t.Fatalf("history of dev-1 after the move: %d events, %v", len(h), err)
	}
	if err := s.AppendAudit(ctx, devices.AuditEvent{Action: "new", Target: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	if head, err = s.VerifyAudit(ctx); err != nil || head.Events != n+1 || head.Chains != 2 {
		t.Fatalf("after a new event: %+v, %v", head, err)
	}
	newest, err := s.Audit(ctx, devices.AuditQuery{Limit: 1})
	if err != nil || newest[0].Action != "new" {
		t.Fatalf("newest event: %+v, %v", newest, err)
	}
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
