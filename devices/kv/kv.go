// Package kv is the inventory's storage seam: ordered byte keys in named
// buckets, read and written in transactions that take a context. The
// inventory (package devices) is written once against it; each engine is a
// subpackage (boltkv, the embedded default) and proves itself with the
// conformance suite in kvtest.
//
// # Basics
//
// [DB.View] runs a read-only transaction, [DB.Update] a read-write one. Both
// see one consistent state of the store; an Update either commits every
// write its function made or none. Keys sort bytewise; [Tx.Ascend] and
// [Tx.Descend] walk a bucket's keys in that order from a starting key, so a
// prefix of a composite key is an index range.
//
// # Caveats
//
// The function given to View, Update or Batch may run more than once: an
// optimistic engine re-runs it when another writer changed what it read, and
// bbolt's Batch re-runs the functions of a batch when one of them fails. It
// must act only through its Tx and keep what it computes in variables it
// resets at its start; whatever it decided in a run that did not commit is
// gone with that run.
//
// Bytes returned by [Tx.Get] belong to the caller. Keys and values passed to
// the function of Ascend or Descend are valid only until it returns (bbolt
// hands out its memory map): copy what you keep. Do not write to the bucket
// a scan is walking from inside its function: collect the keys, then write.
//
// Engines may bound a transaction (etcd: 128 operations, 1.5 MiB). Callers
// that touch an unbounded number of records split the work into chunks of
// at most [MaxOpsPerTx] writes, one transaction each.
package kv

import (
	"context"
	"errors"
	"io"
)

// MaxOpsPerTx is the most writes (puts and deletes) a caller puts in one
// transaction when it may touch many records, so that every engine can
// commit it (etcd's default limit is 128 operations per transaction).
const MaxOpsPerTx = 120

// Tx is one transaction. It is not safe for concurrent use.
type Tx interface {
	// Get returns the value stored under key, or nil and no error when
	// there is none. The caller owns the returned bytes.
	Get(bucket, key []byte) ([]byte, error)
	// Put stores value under key. The engine copies both: the caller may
	// reuse them once Put returns. Keys must not be empty.
	Put(bucket, key, value []byte) error
	// Delete removes key; deleting an absent key is not an error.
	Delete(bucket, key []byte) error
	// Ascend calls fn with every key that starts with prefix and sorts at
	// or after from (nil: the first key of the prefix), in ascending
	// order, until fn returns false or an error (which Ascend returns).
	Ascend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error
	// Descend is Ascend in descending order, from the last key with prefix
	// that sorts at or before from (nil: the last key of the prefix).
	Descend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error
	// NextSequence returns the bucket's next sequence number: 1 for a new
	// bucket, increasing with every committed call.
	NextSequence(bucket []byte) (uint64, error)
}

// DB is a transactional ordered key-value store.
type DB interface {
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// Update runs fn in a read-write transaction and commits its writes
	// when it returns nil. fn may run more than once.
	Update(ctx context.Context, fn func(Tx) error) error
	// Close releases the store. It is safe to call more than once.
	Close() error
}

// Batcher is implemented by engines whose concurrent small writes can share
// one commit (bbolt's Batch shares one fsync). Batch has Update's contract;
// fn runs more than once when another function of its batch fails.
type Batcher interface {
	Batch(ctx context.Context, fn func(Tx) error) error
}

// Checker is implemented by engines with a consistency check of their own
// (bbolt's page check); Check returns the problems it found.
type Checker interface {
	Check(ctx context.Context) []error
}

// Snapshotter is implemented by engines that can hand out a consistent copy
// of the whole store while writers go on: emit is called with the copy's
// size and a function that writes it in the engine's own file format.
type Snapshotter interface {
	Snapshot(ctx context.Context, emit func(size int64, write func(io.Writer) error) error) error
}

// Bounded is implemented by engines that limit how many writes one
// transaction holds (etcd); engines without it take any number.
type Bounded interface {
	MaxTxOps() int
}

// TxOps is the most writes db takes in one transaction, 0 when it has no
// bound. Work that must fit every engine uses MaxOpsPerTx instead.
func TxOps(db DB) int {
	if b, ok := db.(Bounded); ok {
		return b.MaxTxOps()
	}
	return 0
}

// PerTx is how many items, each costing each writes, fit in one of db's
// transactions beside fixed other writes (at least 1); unbounded when the
// engine has no bound.
func PerTx(db DB, each, fixed, unbounded int) int {
	if n := TxOps(db); n > 0 {
		return max(1, (n-fixed)/each)
	}
	return unbounded
}

// Peeker is implemented by transactions that can hand out a stored value
// without copying it (bbolt's memory map). The bytes are valid until the
// transaction writes or ends: decode them at once.
type Peeker interface {
	Peek(bucket, key []byte) ([]byte, error)
}

// Peek is tx's Peek when it has one, else Get.
func Peek(tx Tx, bucket, key []byte) ([]byte, error) {
	if p, ok := tx.(Peeker); ok {
		return p.Peek(bucket, key)
	}
	return tx.Get(bucket, key)
}

// Batch runs fn through db's Batch when the engine has one, else Update.
func Batch(ctx context.Context, db DB, fn func(Tx) error) error {
	if b, ok := db.(Batcher); ok {
		return b.Batch(ctx, fn)
	}
	return db.Update(ctx, fn)
}

var (
	// ErrEmptyKey is returned by Put when the key is empty.
	ErrEmptyKey = errors.New("kv: empty key")
	// ErrReadOnly is returned by Put, Delete and NextSequence inside View.
	ErrReadOnly = errors.New("kv: write in a read-only transaction")
	// ErrClosed is returned when the store was closed.
	ErrClosed = errors.New("kv: store closed")
	// ErrConflict is returned by an optimistic engine when a function kept
	// losing races with other writers until the engine gave up.
	ErrConflict = errors.New("kv: transaction kept conflicting with other writers")
	// ErrTooLarge is returned when a transaction holds more writes than
	// the engine takes in one (see Bounded).
	ErrTooLarge = errors.New("kv: transaction too large")
	// ErrUnavailable is returned when a networked engine cannot reach a
	// working store in time (etcd without quorum): try again later.
	ErrUnavailable = errors.New("kv: store unavailable")
)
