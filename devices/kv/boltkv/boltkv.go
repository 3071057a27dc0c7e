// Package boltkv is the embedded engine of the inventory's storage seam
// (package kv) on a bbolt file: one bbolt bucket per kv bucket, bbolt's
// transactions, its Batch for concurrent small writes (shared fsyncs), its
// page check and its consistent snapshot for backups.
package boltkv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/provisiond/provisiond/devices/kv"
)

// ErrLocked is returned by Open when another process holds the file's lock.
var ErrLocked = errors.New("store is locked by another process")

// DefaultMaxBatchDelay and DefaultMaxBatchSize are Options' defaults.
//
// A batch commits when it holds MaxBatchSize functions or MaxBatchDelay
// after its first, whichever comes first. Enrollments arrive a few hundred
// to a few thousand a second and each costs the server far more CPU than
// its commit takes to wait for: a 10 ms window shares each commit's page
// writes and fdatasync among several enrollments, which took the server's
// CPU per enrollment down by about 15 % against the 2 ms window before
// (docs/performance.md, issue 17), while 32 functions commit at once, so
// that many writers at a time do not wait for the timer.
const (
	DefaultMaxBatchDelay = 10 * time.Millisecond
	DefaultMaxBatchSize  = 32
)

// Options tune how the file is opened.
type Options struct {
	// LockTimeout bounds the wait for the file lock. Default 1s.
	LockTimeout time.Duration
	// MaxBatchDelay is how long Batch callers wait to share one fsync.
	// Default DefaultMaxBatchDelay.
	MaxBatchDelay time.Duration
	// MaxBatchSize commits a batch at once when it holds this many
	// functions. Default DefaultMaxBatchSize.
	MaxBatchSize int
	// Buckets are created at Open; others are created by their first Put.
	Buckets [][]byte
	// AppendBuckets are buckets whose new keys mostly sort after every key
	// they hold (a log keyed by time): their pages are filled to 95 %
	// before they split, instead of bbolt's 50 %, which otherwise leaves
	// half of every page of an append-only bucket empty.
	AppendBuckets [][]byte
}

// DB is a bbolt file behind the kv seam.
type DB struct {
	db      *bolt.DB
	appendB map[string]bool
}

var (
	_ kv.DB          = (*DB)(nil)
	_ kv.Batcher     = (*DB)(nil)
	_ kv.Checker     = (*DB)(nil)
	_ kv.Snapshotter = (*DB)(nil)
	_ kv.Peeker      = (*tx)(nil)
)

// Open opens or creates the bbolt file at path (its directory is created 0700).
func Open(path string, opts Options) (*DB, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MaxBatchDelay == 0 {
		opts.MaxBatchDelay = DefaultMaxBatchDelay
	}
	if opts.MaxBatchSize == 0 {
		opts.MaxBatchSize = DefaultMaxBatchSize
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create store directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.MaxBatchDelay, db.MaxBatchSize = opts.MaxBatchDelay, opts.MaxBatchSize
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range opts.Buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := &DB{db: db, appendB: map[string]bool{}}
	for _, b := range opts.AppendBuckets {
		d.appendB[string(b)] = true
	}
	return d, nil
}

// Path is the file's path.
func (d *DB) Path() string { return d.db.Path() }

// Close closes the file. It is safe to call more than once.
func (d *DB) Close() error { return d.db.Close() }

// View runs fn in a read-only bbolt transaction.
func (d *DB) View(ctx context.Context, fn func(kv.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapErr(d.db.View(func(tx *bolt.Tx) error { return fn(d.newTx(ctx, tx)) }))
}

// Update runs fn in a read-write bbolt transaction. bbolt has one writer at a
// time, so fn runs once.
func (d *DB) Update(ctx context.Context, fn func(kv.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapErr(d.db.Update(func(tx *bolt.Tx) error { return fn(d.newTx(ctx, tx)) }))
}

// Batch runs fn in a transaction it may share with concurrent callers (one
// fsync for all of them). When another function of the batch fails, bbolt
// re-runs the others: fn runs more than once.
func (d *DB) Batch(ctx context.Context, fn func(kv.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return mapErr(d.db.Batch(func(tx *bolt.Tx) error { return fn(d.newTx(ctx, tx)) }))
}

// Check runs bbolt's page check.
func (d *DB) Check(ctx context.Context) []error {
	var out []error
	err := d.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			out = append(out, err)
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		return nil
	})
	if err != nil {
		out = append(out, err)
	}
	return out
}

// Snapshot hands out a consistent copy of the file, taken in one read
// transaction while writers go on.
func (d *DB) Snapshot(ctx context.Context, emit func(size int64, write func(io.Writer) error) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.db.View(func(tx *bolt.Tx) error {
		return emit(tx.Size(), func(w io.Writer) error {
			_, err := tx.WriteTo(w)
			return err
		})
	})
}

func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", kv.ErrClosed, err)
	}
	return err
}

// tx adapts a bbolt transaction; it looks each bucket up once and keeps
// the cursors of finished scans for the next (an index join seeks once per
// step).
type tx struct {
	ctx     context.Context
	appendB map[string]bool
	tx      *bolt.Tx
	buckets map[string]*bolt.Bucket
	spare   map[*bolt.Bucket]*bolt.Cursor
}

// cursor returns a cursor over b: a spare one, or a new one while a scan
// of b is still running (scans may nest).
func (t *tx) cursor(b *bolt.Bucket) *bolt.Cursor {
	if c, ok := t.spare[b]; ok {
		delete(t.spare, b)
		return c
	}
	return b.Cursor()
}

func (t *tx) release(b *bolt.Bucket, c *bolt.Cursor) {
	if t.spare == nil {
		t.spare = make(map[*bolt.Bucket]*bolt.Cursor, 4)
	}
	t.spare[b] = c
}

func (d *DB) newTx(ctx context.Context, t *bolt.Tx) *tx {
	return &tx{ctx: ctx, tx: t, appendB: d.appendB}
}

// bucket returns the named bucket, creating it in a writable transaction
// when create is set; nil when it does not exist.
func (t *tx) bucket(name []byte, create bool) (*bolt.Bucket, error) {
	if b, ok := t.buckets[string(name)]; ok {
		return b, nil
	}
	b := t.tx.Bucket(name)
	if b == nil && create {
		if !t.tx.Writable() {
			return nil, kv.ErrReadOnly
		}
		var err error
		if b, err = t.tx.CreateBucket(name); err != nil {
			return nil, fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	if b != nil {
		if t.appendB[string(name)] {
			b.FillPercent = 0.95
		}
		if t.buckets == nil {
			t.buckets = make(map[string]*bolt.Bucket, 8)
		}
		t.buckets[string(name)] = b
	}
	return b, nil
}

func (t *tx) Get(bucket, key []byte) ([]byte, error) {
	b, err := t.bucket(bucket, false)
	if b == nil || err != nil {
		return nil, err
	}
	v := b.Get(key)
	if v == nil {
		return nil, nil
	}
	return bytes.Clone(v), nil // bbolt's bytes live in its memory map
}

// Peek is Get without the copy: the bytes point into bbolt's memory map
// and are valid until the transaction writes or ends.
func (t *tx) Peek(bucket, key []byte) ([]byte, error) {
	b, err := t.bucket(bucket, false)
	if b == nil || err != nil {
		return nil, err
	}
	return b.Get(key), nil
}

func (t *tx) Put(bucket, key, value []byte) error {
	if len(key) == 0 {
		return kv.ErrEmptyKey
	}
	if !t.tx.Writable() {
		return kv.ErrReadOnly
	}
	b, err := t.bucket(bucket, true)
	if err != nil {
		return err
	}
	// bbolt keeps the slices it is given until the commit.
	if value == nil {
		value = []byte{}
	}
	return b.Put(bytes.Clone(key), bytes.Clone(value))
}

func (t *tx) Delete(bucket, key []byte) error {
	if !t.tx.Writable() {
		return kv.ErrReadOnly
	}
	b, err := t.bucket(bucket, false)
	if b == nil || err != nil {
		return err
	}
	return b.Delete(key)
}

func (t *tx) NextSequence(bucket []byte) (uint64, error) {
	if !t.tx.Writable() {
		return 0, kv.ErrReadOnly
	}
	b, err := t.bucket(bucket, true)
	if err != nil {
		return 0, err
	}
	return b.NextSequence()
}

// checkEvery is how many keys a scan visits between context checks.
const checkEvery = 256

func (t *tx) Ascend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error {
	b, err := t.bucket(bucket, false)
	if b == nil || err != nil {
		return err
	}
	c := t.cursor(b)
	defer t.release(b, c)
	start := prefix
	if bytes.Compare(from, prefix) > 0 {
		start = from
	}
	n := 0
	for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if n++; n%checkEvery == 0 && t.ctx.Err() != nil {
			return t.ctx.Err()
		}
		if more, err := fn(k, v); err != nil || !more {
			return err
		}
	}
	return nil
}

func (t *tx) Descend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error {
	b, err := t.bucket(bucket, false)
	if b == nil || err != nil {
		return err
	}
	c := t.cursor(b)
	defer t.release(b, c)
	var k, v []byte
	switch {
	case from != nil && bytes.HasPrefix(from, prefix):
		// The last key <= from: seek lands on the first key >= from.
		k, v = c.Seek(from)
		if k == nil {
			k, v = c.Last()
		} else if !bytes.Equal(k, from) {
			k, v = c.Prev()
		}
	case from != nil && bytes.Compare(from, prefix) < 0:
		return nil // before every key of the prefix
	default:
		// The last key with prefix: seek past the prefix, then step back.
		if end := prefixEnd(prefix); end != nil {
			k, _ = c.Seek(end)
			if k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		} else {
			k, v = c.Last()
		}
	}
	n := 0
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
		if n++; n%checkEvery == 0 && t.ctx.Err() != nil {
			return t.ctx.Err()
		}
		if more, err := fn(k, v); err != nil || !more {
			return err
		}
	}
	return nil
}

// prefixEnd is the first key after every key with prefix; nil when there is
// none (the prefix is empty or all 0xFF).
func prefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xFF {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
