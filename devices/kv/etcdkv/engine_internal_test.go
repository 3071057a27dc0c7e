package etcdkv

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

var bk = []byte("b")

func open(t *testing.T, opts Options) (*DB, *clientv3.Client, *etcdtest.Cluster) {
	t.Helper()
	c := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	cli := c.Client(t)
	return New(cli, opts), cli, c
}

func mustPut(t *testing.T, db *DB, k, v string) {
	t.Helper()
	if err := db.Update(context.Background(), func(tx kv.Tx) error { return tx.Put(bk, []byte(k), []byte(v)) }); err != nil {
		t.Fatal(err)
	}
}

// A deleted key leaves a tombstone on a lease; etcd removes it when the
// lease runs out, and readers never see it.
func TestTombstonesExpire(t *testing.T) {
	db, cli, _ := open(t, Options{TombstoneTTL: 3 * time.Second})
	ctx := context.Background()
	mustPut(t, db, "gone", "1")
	if err := db.Update(ctx, func(tx kv.Tx) error { return tx.Delete(bk, []byte("gone")) }); err != nil {
		t.Fatal(err)
	}
	raw, err := cli.Get(ctx, db.BucketPrefix(bk)+"gone")
	if err != nil || len(raw.Kvs) != 1 || raw.Kvs[0].Lease == 0 {
		t.Fatalf("right after Delete: %v %v, want a tombstone on a lease", raw, err)
	}
	if err := db.View(ctx, func(tx kv.Tx) error {
		if v, err := tx.Get(bk, []byte("gone")); v != nil || err != nil {
			return fmt.Errorf("Get of a tombstone: %q %v", v, err)
		}
		return tx.Ascend(bk, nil, nil, func(k, _ []byte) (bool, error) { return false, fmt.Errorf("scan yielded %q", k) })
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		raw, err = cli.Get(ctx, db.BucketPrefix(bk)+"gone")
		if err != nil {
			t.Fatal(err)
		}
		if len(raw.Kvs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tombstone outlived its lease")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A commit whose answer was lost is settled through its marker: absent, the
// engine creates it and the lost commit can never apply; present, the
// commit did apply.
func TestLostAnswerResolved(t *testing.T) {
	db, cli, _ := open(t, Options{})
	ctx := context.Background()
	cause := errors.New("answer lost")

	marker := db.root + "t/lost"
	committed, err := db.resolve(ctx, marker, cause)
	if err != nil || committed {
		t.Fatalf("absent marker: committed %v, %v; want fenced (false)", committed, err)
	}
	// The lost commit arrives late: its comparison on the marker fails.
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(marker), "=", 0)).
		Then(clientv3.OpPut(db.BucketPrefix(bk)+"late", "x")).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("a fenced commit applied: %v %v", resp, err)
	}

	marker2 := db.root + "t/landed"
	if _, err := cli.Put(ctx, marker2, ""); err != nil {
		t.Fatal(err)
	}
	committed, err = db.resolve(ctx, marker2, cause)
	if err != nil || !committed {
		t.Fatalf("present marker: committed %v, %v; want true", committed, err)
	}
	if s := db.Stats(); s.Fenced != 2 {
		t.Fatalf("Fenced = %d, want 2", s.Fenced)
	}
}

// A snapshot compacted away while the function reads makes it run again.
func TestCompactedSnapshotRunsAgain(t *testing.T) {
	db, cli, _ := open(t, Options{})
	ctx := context.Background()
	mustPut(t, db, "a", "1")
	mustPut(t, db, "b", "1")
	runs := 0
	err := db.View(ctx, func(tx kv.Tx) error {
		runs++
		if _, err := tx.Get(bk, []byte("a")); err != nil {
			return err
		}
		if runs == 1 {
			r, err := cli.Put(ctx, "/elsewhere", "x")
			if err != nil {
				return err
			}
			if _, err := cli.Compact(ctx, r.Header.Revision); err != nil {
				return err
			}
		}
		_, err := tx.Get(bk, []byte("b"))
		return err
	})
	if err != nil || runs != 2 {
		t.Fatalf("runs %d, err %v; want 2 runs and no error", runs, err)
	}
}

// A transaction older than half the tombstone TTL runs again rather than
// rely on a tombstone that may be gone.
func TestOldTransactionRunsAgain(t *testing.T) {
	db, _, _ := open(t, Options{TombstoneTTL: 3 * time.Second})
	runs := 0
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		runs++
		if _, err := tx.Get(bk, []byte("k")); err != nil {
			return err
		}
		if runs == 1 {
			time.Sleep(db.maxTxAge() + 100*time.Millisecond)
		}
		return tx.Put(bk, []byte("k"), []byte("v"))
	})
	if err != nil || runs != 2 {
		t.Fatalf("runs %d, err %v; want 2", runs, err)
	}
}

// More reads than etcd takes comparisons still commit (merged ranges), and
// a change to any of them is still caught.
func TestManyReadsMerged(t *testing.T) {
	db, cli, _ := open(t, Options{})
	ctx := context.Background()
	for c := 0; c < 400; c += 100 {
		if err := db.Update(ctx, func(tx kv.Tx) error {
			for i := c; i < c+100; i++ {
				if err := tx.Put(bk, fmt.Appendf(nil, "r/%03d", i), []byte("0")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	var runs atomic.Int32
	err := db.Update(ctx, func(tx kv.Tx) error {
		n := runs.Add(1)
		for i := 0; i < 400; i += 1 {
			if _, err := tx.Get(bk, fmt.Appendf(nil, "r/%03d", i)); err != nil {
				return err
			}
		}
		if n == 1 { // another writer changes one key read among 400
			if _, err := cli.Put(ctx, db.BucketPrefix(bk)+"r/257", "1"); err != nil {
				return err
			}
		}
		return tx.Put(bk, []byte("sum"), []byte("x"))
	})
	if err != nil || runs.Load() != 2 {
		t.Fatalf("runs %d, err %v; want a second run after the change", runs.Load(), err)
	}
	// Too many writes for one Txn is refused before it is sent.
	err = db.Update(ctx, func(tx kv.Tx) error {
		for i := range db.MaxTxOps() + 1 {
			if err := tx.Put(bk, fmt.Appendf(nil, "w/%03d", i), nil); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, kv.ErrTooLarge) {
		t.Fatalf("%d writes: %v, want ErrTooLarge", db.MaxTxOps()+1, err)
	}
}

// Without etcd, calls end with kv.ErrUnavailable after RequestTimeout.
func TestUnavailable(t *testing.T) {
	db, _, c := open(t, Options{RequestTimeout: 300 * time.Millisecond})
	mustPut(t, db, "k", "v")
	c.Kill(c.Members()[0])
	start := time.Now()
	err := db.Update(context.Background(), func(tx kv.Tx) error { return tx.Put(bk, []byte("k"), []byte("w")) })
	if !errors.Is(err, kv.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("write without etcd: %v, want ErrUnavailable", err)
	}
	if !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("write without etcd: %v, want ErrUnavailable", err)
	}
	err = db.View(context.Background(), func(tx kv.Tx) error { _, err := tx.Get(bk, []byte("k")); return err })
	if !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("read without etcd: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("took %v", d)
	}
}

// A lease that ended under the engine (revoked, or expired in a long stall)
// is replaced and the commit goes through.
func TestLostLeaseReplaced(t *testing.T) {
	db, cli, _ := open(t, Options{})
	ctx := context.Background()
	mustPut(t, db, "a", "1")
	lease, err := db.getLease(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if err := db.Update(ctx, func(tx kv.Tx) error { return tx.Delete(bk, []byte("a")) }); err != nil {
		t.Fatalf("delete after the lease was revoked: %v", err)
	}
	if err := db.View(ctx, func(tx kv.Tx) error {
		if v, err := tx.Get(bk, []byte("a")); v != nil || err != nil {
			return fmt.Errorf("a = %q, %v after its delete", v, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if db.lease == lease {
		t.Fatal("the engine kept the revoked lease")
	}
}
