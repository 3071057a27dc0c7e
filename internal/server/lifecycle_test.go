package server_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
)

// TestOlderInventoryCopiedThenMoved opens an inventory written before the
// audit log had chains: the file is copied first, then migrated, and both
// the copy (the old layout) and the migrated store verify.
func TestOlderInventoryCopiedThenMoved(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), server.InventoryFile)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
	err = db.Update(func(tx *bolt.Tx) error {
		audit, _ := tx.CreateBucket([]byte("audit"))
		meta, _ := tx.CreateBucket([]byte("meta"))
		prev := ""
		for i := uint64(1); i <= 3; i++ {
			ev := devices.AuditEvent{Seq: i, Time: time.Date(2026, 10, 1, 0, 0, int(i), 0, time.UTC), Actor: "system", Action: "old", PrevHash: prev}
			ev.Hash, _ = devices.HashAuditEvent(ev)
			prev = ev.Hash
			raw, _ := json.Marshal(ev)
			audit.Put(seq(i), raw)
		}
		return meta.Put([]byte("audit_head"), append(seq(3), prev...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.OpenInventory(ctx, path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	head, err := st.VerifyAudit(ctx)
	st.Close()
	if err != nil || head.Events != 3 {
		t.Fatalf("migrated store: %+v, %v", head, err)
	}
	copied, err := bolt.Open(path+".before-audit-chains", 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("the copy taken before migrating: %v", err)
	}
	defer copied.Close()
	copied.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("audit")); b == nil || b.Stats().KeyN != 3 || tx.Bucket([]byte("meta")).Get([]byte("audit_head")) == nil {
			t.Error("the copy does not hold the old layout")
		}
		return nil
	})
	// Opening again finds nothing to migrate and copies nothing more.
	st, err = server.OpenInventory(ctx, path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if m, _ := filepath.Glob(path + ".before-*"); len(m) != 1 {
		t.Errorf("copies after a second open: %v", m)
	}
}

// TestErrIsOneChannel: Server.Err is one channel, not a goroutine and a
// channel per call (main selects on it in a loop).
func TestErrIsOneChannel(t *testing.T) {
	env := servertest.Start(t)
	first := env.Server.Err()
	before := runtime.NumGoroutine()
	for range 1000 {
		if env.Server.Err() != first {
			t.Fatal("Err hands out a new channel per call")
		}
	}
	if grown := runtime.NumGoroutine() - before; grown > 50 {
		t.Fatalf("1000 calls of Err started %d goroutines", grown)
	}
}
