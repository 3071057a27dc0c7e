// Package kvtest is the conformance suite of the inventory's storage seam:
// every engine's tests call [Run] with a function that opens an empty store,
// and the engine is fit for the inventory when every case passes. The cases
// hold the contract package kv documents: key order and range edges, values
// copied out, sequences, serializable writers (no lost update, no phantom),
// no trace of a function's runs that did not commit, and contexts.
package kvtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/provisiond/provisiond/devices/kv"
)

// Run runs the suite; open returns a new, empty store (closed by the suite).
func Run(t *testing.T, open func(t *testing.T) kv.DB) {
	cases := []struct {
		name string
		fn   func(t *testing.T, db kv.DB)
	}{
		{"GetPutDelete", testGetPutDelete},
		{"KeyOrderAndRangeEdges", testKeyOrder},
		{"Descend", testDescend},
		{"ValuesCopiedOut", testCopyOut},
		{"BucketsApart", testBucketsApart},
		{"Sequences", testSequences},
		{"FailedUpdateLeavesNothing", testRollback},
		{"ReadOnlyView", testReadOnly},
		{"RacingWritersOnOneKey", testRacingWriters},
		{"PhantomInsertDetected", testPhantom},
		{"DeleteInScannedRangeDetected", testPhantomDelete},
		{"OwnWritesVisible", testOwnWrites},
		{"RetriedFunctionLeavesNoTrace", testRetryNoTrace},
		{"ContextCancelled", testContext},
		{"ScanStopsEarly", testScanStops},
		{"ChunkOfMaxOps", testChunk},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db := open(t)
			t.Cleanup(func() { _ = db.Close() })
			c.fn(t, db)
		})
	}
}

var bk = []byte("b")

func put(t *testing.T, db kv.DB, kvs ...string) {
	t.Helper()
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		for i := 0; i+1 < len(kvs); i += 2 {
			if err := tx.Put(bk, []byte(kvs[i]), []byte(kvs[i+1])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
}

func get(t *testing.T, db kv.DB, key string) []byte {
	t.Helper()
	var v []byte
	if err := db.View(context.Background(), func(tx kv.Tx) (err error) {
		v, err = tx.Get(bk, []byte(key))
		return err
	}); err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	return v
}

// scan lists the keys Ascend (or Descend) yields.
func scan(t *testing.T, db kv.DB, desc bool, prefix, from string) []string {
	t.Helper()
	var out []string
	var f []byte
	if from != "" {
		f = []byte(from)
	}
	err := db.View(context.Background(), func(tx kv.Tx) error {
		out = out[:0]
		walk := tx.Ascend
		if desc {
			walk = tx.Descend
		}
		return walk(bk, []byte(prefix), f, func(k, _ []byte) (bool, error) {
			out = append(out, string(k))
			return true, nil
		})
	})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	return out
}

func testGetPutDelete(t *testing.T, db kv.DB) {
	if v := get(t, db, "a"); v != nil {
		t.Fatalf("absent key: got %q, want nil", v)
	}
	put(t, db, "a", "1", "empty", "")
	if v := get(t, db, "a"); string(v) != "1" {
		t.Fatalf("a = %q, want 1", v)
	}
	if v := get(t, db, "empty"); v == nil || len(v) != 0 {
		t.Fatalf("empty value: got %v, want a non-nil empty slice (present, empty)", v)
	}
	put(t, db, "a", "2")
	if v := get(t, db, "a"); string(v) != "2" {
		t.Fatalf("overwrite: a = %q, want 2", v)
	}
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		if err := tx.Delete(bk, []byte("a")); err != nil {
			return err
		}
		if err := tx.Delete(bk, []byte("never-there")); err != nil {
			return fmt.Errorf("deleting an absent key: %w", err)
		}
		if v, err := tx.Get(bk, []byte("a")); err != nil || v != nil {
			return fmt.Errorf("a deleted in this transaction reads back as %q, %v", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if v := get(t, db, "a"); v != nil {
		t.Fatalf("deleted key reads %q", v)
	}
	err = db.Update(context.Background(), func(tx kv.Tx) error { return tx.Put(bk, nil, []byte("x")) })
	if !errors.Is(err, kv.ErrEmptyKey) {
		t.Fatalf("empty key: got %v, want ErrEmptyKey", err)
	}
}

func testKeyOrder(t *testing.T, db kv.DB) {
	// Bytewise order, prefixes that are keys themselves, 0x00 and 0xFF edges.
	keys := []string{"a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "a\xff\xff", "b", "\x00", "\xff", "\xff\xff"}
	var kvs []string
	for _, k := range keys {
		kvs = append(kvs, k, "v"+k)
	}
	put(t, db, kvs...)
	sorted := slices.Clone(keys)
	slices.Sort(sorted)
	for _, c := range []struct {
		name, prefix, from string
		want               []string
	}{
		{"all", "", "", sorted},
		{"prefix a", "a", "", []string{"a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "a\xff\xff"}},
		{"prefix a\\x00", "a\x00", "", []string{"a\x00", "a\x00\x00"}},
		{"prefix a\\xff", "a\xff", "", []string{"a\xff", "a\xff\xff"}},
		{"prefix \\xff", "\xff", "", []string{"\xff", "\xff\xff"}},
		{"from inside", "a", "a\x01", []string{"a\x01", "ab", "a\xff", "a\xff\xff"}},
		{"from between keys", "a", "a\x02", []string{"ab", "a\xff", "a\xff\xff"}},
		{"from before prefix", "a", "\x00\x01", []string{"a", "a\x00", "a\x00\x00", "a\x01", "ab", "a\xff", "a\xff\xff"}},
		{"from past prefix", "a", "b", nil},
		{"absent prefix", "c", "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := scan(t, db, false, c.prefix, c.from); !slices.Equal(got, c.want) {
				t.Fatalf("Ascend(%q, from %q) = %q, want %q", c.prefix, c.from, got, c.want)
			}
		})
	}
	if got := scan(t, db, false, "", ""); len(got) != len(keys) {
		t.Fatalf("scan of a missing bucket's neighbour changed: %q", got)
	}
	err := db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Ascend([]byte("no-such-bucket"), nil, nil, func(k, _ []byte) (bool, error) {
			return false, fmt.Errorf("a bucket never written yields %q", k)
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testDescend(t *testing.T, db kv.DB) {
	put(t, db, "a", "", "a\x00", "", "a\x01", "", "ab", "", "a\xff", "", "a\xff\xff", "", "b", "", "\xff", "")
	for _, c := range []struct {
		name, prefix, from string
		want               []string
	}{
		{"all", "", "", []string{"\xff", "b", "a\xff\xff", "a\xff", "ab", "a\x01", "a\x00", "a"}},
		{"prefix a", "a", "", []string{"a\xff\xff", "a\xff", "ab", "a\x01", "a\x00", "a"}},
		{"prefix a\\xff (no key after it)", "a\xff", "", []string{"a\xff\xff", "a\xff"}},
		{"from a key", "a", "ab", []string{"ab", "a\x01", "a\x00", "a"}},
		{"from between keys", "a", "a\x02", []string{"a\x01", "a\x00", "a"}},
		{"from past prefix", "a", "c", []string{"a\xff\xff", "a\xff", "ab", "a\x01", "a\x00", "a"}},
		{"from before prefix", "a", "\x01", nil},
		{"prefix \\xff", "\xff", "", []string{"\xff"}},
		{"absent prefix", "c", "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := scan(t, db, true, c.prefix, c.from); !slices.Equal(got, c.want) {
				t.Fatalf("Descend(%q, from %q) = %q, want %q", c.prefix, c.from, got, c.want)
			}
		})
	}
}

func testCopyOut(t *testing.T, db kv.DB) {
	key, val := []byte("k"), []byte("value")
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		if err := tx.Put(bk, key, val); err != nil {
			return err
		}
		// The caller may reuse its buffers once Put returns.
		key[0], val[0] = 'X', 'X'
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	v := get(t, db, "k")
	if string(v) != "value" {
		t.Fatalf("after the caller reused its buffers: k = %q, want value", v)
	}
	// Peek (where the engine has it) sees what Get sees.
	err = db.View(context.Background(), func(tx kv.Tx) error {
		for _, k := range []string{"k", "absent"} {
			want, err := tx.Get(bk, []byte(k))
			if err != nil {
				return err
			}
			got, err := kv.Peek(tx, bk, []byte(k))
			if err != nil || !bytes.Equal(got, want) || (got == nil) != (want == nil) {
				return fmt.Errorf("Peek(%q) = %q, %v; Get gave %q", k, got, err, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if get(t, db, "X") != nil {
		t.Fatal("the reused key buffer was stored")
	}
	v[0] = 'Y' // the caller owns what Get returned
	if got := get(t, db, "k"); string(got) != "value" {
		t.Fatalf("changing a returned value changed the store: %q", got)
	}
	// Bytes kept from a finished transaction stay intact while others write.
	put(t, db, "k", "other", "k2", "more")
	if string(v) != "Yalue" {
		t.Fatalf("a returned value changed under the caller: %q", v)
	}
}

func testBucketsApart(t *testing.T, db kv.DB) {
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		if err := tx.Put([]byte("one"), []byte("k"), []byte("1")); err != nil {
			return err
		}
		return tx.Put([]byte("two"), []byte("k"), []byte("2"))
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(context.Background(), func(tx kv.Tx) error {
		for b, want := range map[string]string{"one": "1", "two": "2", "three": ""} {
			v, err := tx.Get([]byte(b), []byte("k"))
			if err != nil || string(v) != want {
				return fmt.Errorf("bucket %s: k = %q, %v; want %q", b, v, err, want)
			}
			n := 0
			if err := tx.Ascend([]byte(b), nil, nil, func(_, _ []byte) (bool, error) { n++; return true, nil }); err != nil {
				return err
			}
			if want != "" && n != 1 || want == "" && n != 0 {
				return fmt.Errorf("bucket %s scans %d keys", b, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testSequences(t *testing.T, db kv.DB) {
	next := func(b string) uint64 {
		var n uint64
		if err := db.Update(context.Background(), func(tx kv.Tx) (err error) {
			n, err = tx.NextSequence([]byte(b))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if a, b := next("s1"), next("s1"); a != 1 || b != 2 {
		t.Fatalf("sequence of a new bucket: %d, %d; want 1, 2", a, b)
	}
	if n := next("s2"); n != 1 {
		t.Fatalf("a second bucket's sequence starts at %d, want 1", n)
	}
	// Concurrent writers never get the same number, and numbers increase.
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			last := uint64(0)
			for range 25 {
				var n uint64
				if err := kv.Batch(context.Background(), db, func(tx kv.Tx) (err error) {
					n, err = tx.NextSequence([]byte("s3"))
					return err
				}); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				dup := seen[n]
				seen[n] = true
				mu.Unlock()
				if dup || n <= last {
					errs <- fmt.Errorf("sequence %d after %d (duplicate %v)", n, last, dup)
					return
				}
				last = n
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != 200 {
		t.Fatalf("%d distinct sequence numbers for 200 calls", len(seen))
	}
	err := db.View(context.Background(), func(tx kv.Tx) error {
		_, err := tx.NextSequence([]byte("s1"))
		return err
	})
	if !errors.Is(err, kv.ErrReadOnly) {
		t.Fatalf("NextSequence in View: %v, want ErrReadOnly", err)
	}
}

func testRollback(t *testing.T, db kv.DB) {
	put(t, db, "keep", "1")
	boom := errors.New("boom")
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		if err := tx.Put(bk, []byte("new"), []byte("x")); err != nil {
			return err
		}
		if err := tx.Put(bk, []byte("keep"), []byte("changed")); err != nil {
			return err
		}
		if err := tx.Delete(bk, []byte("keep")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want the function's error", err)
	}
	if get(t, db, "new") != nil || string(get(t, db, "keep")) != "1" {
		t.Fatal("a failed Update left writes behind")
	}
}

func testReadOnly(t *testing.T, db kv.DB) {
	err := db.View(context.Background(), func(tx kv.Tx) error { return tx.Put(bk, []byte("k"), []byte("v")) })
	if !errors.Is(err, kv.ErrReadOnly) {
		t.Fatalf("Put in View: %v, want ErrReadOnly", err)
	}
	err = db.View(context.Background(), func(tx kv.Tx) error { return tx.Delete(bk, []byte("k")) })
	if !errors.Is(err, kv.ErrReadOnly) {
		t.Fatalf("Delete in View: %v, want ErrReadOnly", err)
	}
}

// testRacingWriters: writers that read a counter and write it back plus one
// lose no update, whether the engine serializes them or makes the loser of
// a race run again and see the winner's write.
func testRacingWriters(t *testing.T, db kv.DB) {
	const writers, each = 8, 30
	var runs atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Go(func() {
			for range each {
				err := kv.Batch(context.Background(), db, func(tx kv.Tx) error {
					runs.Add(1)
					v, err := tx.Get(bk, []byte("counter"))
					if err != nil {
						return err
					}
					var n uint64
					if len(v) == 8 {
						n = binary.BigEndian.Uint64(v)
					}
					return tx.Put(bk, []byte("counter"), binary.BigEndian.AppendUint64(nil, n+1))
				})
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	v := get(t, db, "counter")
	if got := binary.BigEndian.Uint64(v); got != writers*each {
		t.Fatalf("counter = %d after %d increments (%d runs): updates were lost", got, writers*each, runs.Load())
	}
	t.Logf("%d increments took %d runs of the function", writers*each, runs.Load())
}

// concurrently runs fn(0) ... fn(n-1) at once and fails the test with the
// first error any returns (after all have ended).
func concurrently(t *testing.T, n int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			if err := fn(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// count is how many keys with prefix tx sees.
func count(tx kv.Tx, prefix string) (int, error) {
	n := 0
	err := tx.Ascend(bk, []byte(prefix), nil, func(_, _ []byte) (bool, error) {
		n++
		return true, nil
	})
	return n, err
}

// testPhantom: each writer counts the keys of a range, adds one key to it and
// records the count it saw plus one. If an engine let two writers miss each
// other's insert (a phantom), two records would say the same count.
func testPhantom(t *testing.T, db kv.DB) {
	const writers = 16
	concurrently(t, writers, func(i int) error {
		return kv.Batch(context.Background(), db, func(tx kv.Tx) error {
			n, err := count(tx, "range/")
			if err != nil {
				return err
			}
			if err := tx.Put(bk, fmt.Appendf(nil, "range/%02d", i), nil); err != nil {
				return err
			}
			return tx.Put(bk, fmt.Appendf(nil, "seen/%02d", n+1), fmt.Appendf(nil, "%d", i))
		})
	})
	if got := scan(t, db, false, "range/", ""); len(got) != writers {
		t.Fatalf("%d keys in the range, want %d", len(got), writers)
	}
	if got := scan(t, db, false, "seen/", ""); len(got) != writers {
		t.Fatalf("%d distinct counts for %d serialized inserts (%q): a writer missed another's insert", len(got), writers, got)
	}
}

// testPhantomDelete: each writer counts the keys of a range, removes its
// own key from it and records the count it saw. Serialized, the counts are
// writers, writers-1, ..., 1; an engine that let a writer miss another's
// delete would record one count twice.
func testPhantomDelete(t *testing.T, db kv.DB) {
	const writers = 16
	var kvs []string
	for i := range writers {
		kvs = append(kvs, fmt.Sprintf("del/%02d", i), "x")
	}
	put(t, db, kvs...)
	concurrently(t, writers, func(i int) error {
		return kv.Batch(context.Background(), db, func(tx kv.Tx) error {
			n, err := count(tx, "del/")
			if err != nil {
				return err
			}
			if err := tx.Delete(bk, fmt.Appendf(nil, "del/%02d", i)); err != nil {
				return err
			}
			return tx.Put(bk, fmt.Appendf(nil, "count/%02d", n), fmt.Appendf(nil, "%d", i))
		})
	})
	if got := scan(t, db, false, "del/", ""); len(got) != 0 {
		t.Fatalf("%d keys left in the range (%q), want none", len(got), got)
	}
	if got := scan(t, db, false, "count/", ""); len(got) != writers {
		t.Fatalf("%d distinct counts for %d serialized deletes (%q): a writer missed another's delete", len(got), writers, got)
	}
}

// testOwnWrites: inside an Update, Get and scans see the transaction's own
// puts and deletes, in key order among the stored keys, over ranges longer
// than any engine's first page.
func testOwnWrites(t *testing.T, db kv.DB) {
	var kvs []string
	for i := 0; i < 300; i += 2 {
		kvs = append(kvs, fmt.Sprintf("own/%03d", i), "stored")
	}
	for c := 0; c < len(kvs); c += 2 * kv.MaxOpsPerTx {
		put(t, db, kvs[c:min(c+2*kv.MaxOpsPerTx, len(kvs))]...)
	}
	var want []string
	for i := range 300 {
		switch {
		case i%10 == 0: // stored, deleted below
		case i%2 == 0:
			want = append(want, fmt.Sprintf("own/%03d=stored", i))
		case i%3 == 0: // odd: written below
			want = append(want, fmt.Sprintf("own/%03d=mine", i))
		}
	}
	desc := slices.Clone(want)
	slices.Reverse(desc)
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		for i := range 300 {
			k := fmt.Appendf(nil, "own/%03d", i)
			switch {
			case i%10 == 0:
				if err := tx.Delete(bk, k); err != nil {
					return err
				}
			case i%2 == 1 && i%3 == 0:
				if err := tx.Put(bk, k, []byte("mine")); err != nil {
					return err
				}
			}
		}
		if v, err := tx.Get(bk, []byte("own/003")); err != nil || string(v) != "mine" {
			return fmt.Errorf("get of an own put: %q, %v", v, err)
		}
		if v, err := tx.Get(bk, []byte("own/010")); err != nil || v != nil {
			return fmt.Errorf("get of an own delete: %q, %v", v, err)
		}
		for _, dir := range []struct {
			walk func([]byte, []byte, []byte, func(k, v []byte) (bool, error)) error
			want []string
		}{{tx.Ascend, want}, {tx.Descend, desc}} {
			var got []string
			if err := dir.walk(bk, []byte("own/"), nil, func(k, v []byte) (bool, error) {
				got = append(got, string(k)+"="+string(v))
				return true, nil
			}); err != nil {
				return err
			}
			if !slices.Equal(got, dir.want) {
				return fmt.Errorf("scan in the transaction:\n got %q\nwant %q", got, dir.want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := scan(t, db, false, "own/", ""); len(got) != len(want) {
		t.Fatalf("after commit: %d keys, want %d", len(got), len(want))
	}
}

// testRetryNoTrace: functions of one commit group, one of which fails, run
// again; only the runs that committed leave writes, and the failing one none.
func testRetryNoTrace(t *testing.T, db kv.DB) {
	const writers = 12
	var runs atomic.Int64
	boom := errors.New("boom")
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for i := range writers {
		wg.Go(func() {
			<-start
			err := kv.Batch(context.Background(), db, func(tx kv.Tx) error {
				r := runs.Add(1)
				// Every run writes a key of its own; only the committed
				// run's key may remain.
				if err := tx.Put(bk, fmt.Appendf(nil, "run/%02d/%03d", i, r), nil); err != nil {
					return err
				}
				v, err := tx.Get(bk, []byte("total"))
				if err != nil {
					return err
				}
				n := 0
				if v != nil {
					_, _ = fmt.Sscan(string(v), &n)
				}
				if err := tx.Put(bk, []byte("total"), fmt.Appendf(nil, "%d", n+1)); err != nil {
					return err
				}
				if i == 0 {
					return boom
				}
				return nil
			})
			switch {
			case i == 0 && !errors.Is(err, boom):
				errs <- fmt.Errorf("failing function: %v, want boom", err)
			case i != 0 && err != nil:
				errs <- err
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if v := get(t, db, "total"); string(v) != fmt.Sprint(writers-1) {
		t.Fatalf("total = %s, want %d: a run that did not commit left its write", v, writers-1)
	}
	for i := range writers {
		got := scan(t, db, false, fmt.Sprintf("run/%02d/", i), "")
		want := 1
		if i == 0 {
			want = 0
		}
		if len(got) != want {
			t.Fatalf("writer %d left %d run keys (%q), want %d", i, len(got), got, want)
		}
	}
	t.Logf("%d functions ran %d times", writers, runs.Load())
}

func testContext(t *testing.T, db kv.DB) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := db.Update(ctx, func(kv.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("Update with a cancelled context: %v (ran %v), want context.Canceled without running", err, ran)
	}
	if err := db.View(ctx, func(kv.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("View with a cancelled context: %v (ran %v)", err, ran)
	}
	if err := kv.Batch(ctx, db, func(kv.Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("Batch with a cancelled context: %v (ran %v)", err, ran)
	}
	// Cancelled during a long scan: the scan stops with the context's error
	// and the transaction commits nothing.
	for c := 0; c < 3000; c += kv.MaxOpsPerTx {
		var kvs []string
		for i := c; i < min(c+kv.MaxOpsPerTx, 3000); i++ {
			kvs = append(kvs, fmt.Sprintf("scan/%05d", i), "")
		}
		put(t, db, kvs...)
	}
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	seen := 0
	err := db.Update(ctx, func(tx kv.Tx) error {
		seen = 0
		if err := tx.Put(bk, []byte("written-before-cancel"), nil); err != nil {
			return err
		}
		return tx.Ascend(bk, []byte("scan/"), nil, func(_, _ []byte) (bool, error) {
			if seen++; seen == 10 {
				cancel()
			}
			return true, nil
		})
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("scan after cancel: %v, want context.Canceled", err)
	}
	if seen >= 3000 {
		t.Fatal("the scan ran to the end after its context was cancelled")
	}
	if get(t, db, "written-before-cancel") != nil {
		t.Fatal("a transaction cancelled mid-scan committed")
	}
}

func testScanStops(t *testing.T, db kv.DB) {
	put(t, db, "p/1", "", "p/2", "", "p/3", "")
	var got []string
	stop := errors.New("stop")
	err := db.View(context.Background(), func(tx kv.Tx) error {
		got = got[:0]
		return tx.Ascend(bk, []byte("p/"), nil, func(k, _ []byte) (bool, error) {
			got = append(got, string(k))
			return len(got) < 2, nil
		})
	})
	if err != nil || !slices.Equal(got, []string{"p/1", "p/2"}) {
		t.Fatalf("stop after 2: %q, %v", got, err)
	}
	err = db.View(context.Background(), func(tx kv.Tx) error {
		return tx.Descend(bk, []byte("p/"), nil, func(_, _ []byte) (bool, error) { return true, stop })
	})
	if !errors.Is(err, stop) {
		t.Fatalf("a scan function's error: got %v", err)
	}
}

// testChunk: a transaction of kv.MaxOpsPerTx writes commits on every engine.
func testChunk(t *testing.T, db kv.DB) {
	val := bytes.Repeat([]byte("v"), 1024)
	err := db.Update(context.Background(), func(tx kv.Tx) error {
		for i := range kv.MaxOpsPerTx {
			if err := tx.Put(bk, fmt.Appendf(nil, "chunk/%04d", i), val); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("a chunk of %d writes: %v", kv.MaxOpsPerTx, err)
	}
	if got := scan(t, db, false, "chunk/", ""); len(got) != kv.MaxOpsPerTx {
		t.Fatalf("%d keys, want %d", len(got), kv.MaxOpsPerTx)
	}
}
