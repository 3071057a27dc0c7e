package devices

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/provisiond/provisiond/devices/kv"
)

// ErrNotEmpty is returned by Copy when the destination holds an inventory.
var ErrNotEmpty = errors.New("the destination store is not empty")

// CopyStats is what Copy moved.
type CopyStats struct {
	Keys  int            // keys copied
	Bytes int64          // key and value bytes copied
	Per   map[string]int // keys per bucket
	// BytesPer is the key and value bytes per bucket.
	BytesPer map[string]int64
}

// Copy moves every record of the inventory from into dst, which must be
// empty, key for key (the audit chains keep their hashes; certificates,
// tokens and leases stay valid): the move of a single node's inventory into
// a cluster's store. Reads come from one snapshot of src; writes go in
// transactions of at most dst's bound, workers at a time (the keys are
// distinct, so they never conflict). A failed copy leaves dst partly
// written: empty it before trying again.
func Copy(ctx context.Context, dst kv.DB, from *Store, workers int) (CopyStats, error) {
	src := from.db
	st := CopyStats{Per: map[string]int{}, BytesPer: map[string]int64{}}
	for _, b := range Buckets {
		if err := dst.View(ctx, func(tx kv.Tx) error {
			return tx.Ascend(b, nil, nil, func(k, _ []byte) (bool, error) {
				return false, fmt.Errorf("%w: bucket %s has keys", ErrNotEmpty, b)
			})
		}); err != nil {
			return st, err
		}
	}
	chunk := kv.PerTx(dst, 1, 0, 1000)
	workers = max(workers, 1)
	type batch struct {
		bucket []byte
		kvs    [][2][]byte
	}
	work := make(chan batch, workers)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Go(func() {
			for b := range work {
				err := dst.Update(ctx, func(tx kv.Tx) error {
					for _, p := range b.kvs {
						if err := tx.Put(b.bucket, p[0], p[1]); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("copy %s: %w", b.bucket, err))
					mu.Unlock()
				}
			}
		})
	}
	err := src.View(ctx, func(tx kv.Tx) error {
		st = CopyStats{Per: map[string]int{}, BytesPer: map[string]int64{}} // a run again starts over (its puts repeat the same keys)
		for _, b := range Buckets {
			cur := batch{bucket: b}
			err := tx.Ascend(b, nil, nil, func(k, v []byte) (bool, error) {
				mu.Lock()
				failed := firstErr
				mu.Unlock()
				if failed != nil {
					return false, failed
				}
				cur.kvs = append(cur.kvs, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
				st.Keys++
				st.Bytes += int64(len(k) + len(v))
				st.Per[string(b)]++
				st.BytesPer[string(b)] += int64(len(k) + len(v))
				if len(cur.kvs) == chunk {
					select {
					case work <- cur:
					case <-ctx.Done():
						return false, ctx.Err()
					}
					cur = batch{bucket: b}
				}
				return true, nil
			})
			if err != nil {
				return err
			}
			if len(cur.kvs) > 0 {
				work <- cur
			}
		}
		return nil
	})
	close(work)
	wg.Wait()
	return st, cmpErr(err, firstErr)
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
