// Package etcdkv is the cluster engine of the inventory's storage seam
// (package kv) on etcd: every provisiond replica of a cluster opens the same
// etcd keyspace and sees one inventory.
//
// # Basics
//
// A kv bucket is a key range: bucket b's key k is stored in etcd under
// PREFIX "b/" b "/" k, its sequence under PREFIX "s/" b. A transaction reads
// from one etcd revision (its snapshot: the revision of its first read),
// buffers its writes, and commits them in one etcd Txn whose comparisons
// prove that nothing it read changed since that revision: every key and
// every scanned range must still have a modification revision at or below
// the snapshot. When another writer got there first, the Txn fails and the
// function runs again on a fresh snapshot (optimistic concurrency control,
// as etcd's own STM does, but bounded and with scans).
//
// # Caveats
//
// A range comparison sees keys that are in the range, not keys that were
// removed from it. So Delete does not remove a key at once: it writes an
// empty tombstone attached to a short etcd lease (TombstoneTTL). Readers
// skip tombstones, a concurrent scan of the range sees the change, and etcd
// removes the tombstone when its lease expires. A transaction older than
// half the TTL when it commits runs again, so no tombstone it might have
// needed is gone.
//
// A commit whose answer was lost (a timeout, a leader change) may still
// have landed. Every commit therefore also creates a marker key that its
// own comparison requires absent; after a lost answer the engine creates
// the marker itself if it is still absent, which fences the lost commit
// off for good, and otherwise reads whether the commit wrote it. The caller
// sees either a commit or a clean re-run; only when etcd stays unreachable
// for three RequestTimeouts does Update return kv.ErrUnavailable with the
// outcome unknown (and then a re-run later sees what happened).
//
// etcd limits a Txn to MaxTxOps comparisons and as many writes (128 by
// default, --max-txn-ops); the marker takes one of each, so MaxTxOps tells
// the inventory one less. Reads beyond the comparison budget are merged
// into wider ranges, which may cause a spurious re-run, never a missed
// conflict.
package etcdkv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/provisiond/provisiond/devices/kv"
)

// Options tune the engine. The zero value is etcd's defaults.
type Options struct {
	// Prefix is put before every key, so that one etcd cluster can hold
	// several inventories. Default "/provisiond/".
	Prefix string
	// MaxTxOps is the etcd server's --max-txn-ops. Default 128.
	MaxTxOps int
	// TombstoneTTL is how long a deleted key's tombstone stays (rounded up
	// to whole seconds). Default 60s.
	TombstoneTTL time.Duration
	// RequestTimeout bounds each request to etcd, so that a cluster without
	// quorum turns into kv.ErrUnavailable instead of a hang. Default 5s.
	RequestTimeout time.Duration
	// MaxAttempts bounds how often a conflicting function runs. Default 64.
	MaxAttempts int
}

func (o *Options) defaults() {
	if o.Prefix == "" {
		o.Prefix = "/provisiond/"
	}
	if o.MaxTxOps == 0 {
		o.MaxTxOps = 128
	}
	if o.TombstoneTTL == 0 {
		o.TombstoneTTL = time.Minute
	}
	if o.TombstoneTTL < 3*time.Second {
		o.TombstoneTTL = 3 * time.Second
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = 5 * time.Second
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 64
	}
}

// DB is an etcd keyspace behind the kv seam.
type DB struct {
	cli  *clientv3.Client
	opts Options
	root string

	leaseMu sync.Mutex
	lease   clientv3.LeaseID
	leaseAt time.Time

	closed atomic.Bool
	owned  bool // Dial made the client: Close closes it
	stats  struct{ commits, reruns, reads, txns, fenced atomic.Int64 }
}

var (
	_ kv.DB      = (*DB)(nil)
	_ kv.Bounded = (*DB)(nil)
)

// New returns the engine over cli's cluster. The caller keeps cli and
// closes it after the DB.
func New(cli *clientv3.Client, opts Options) *DB {
	opts.defaults()
	return &DB{cli: cli, opts: opts, root: opts.Prefix}
}

// Client is the etcd client the engine uses (for watches and elections
// beside the inventory).
func (db *DB) Client() *clientv3.Client { return db.cli }

// Prefix is the key prefix of this inventory.
func (db *DB) Prefix() string { return db.root }

// BucketPrefix is the etcd key prefix of bucket's keys, for watchers.
func (db *DB) BucketPrefix(bucket []byte) string {
	return db.root + "b/" + string(bucket) + "/"
}

// MaxTxOps is the most writes one transaction takes: etcd's limit less the
// commit marker.
func (db *DB) MaxTxOps() int { return db.opts.MaxTxOps - 1 }

// Stats counts what the engine did since it was opened.
type Stats struct {
	// Commits is how many write transactions committed.
	Commits int64
	// Reruns is how many times a function ran again after a conflict.
	Reruns int64
	// Reads is how many read requests went to etcd.
	Reads int64
	// Txns is how many Txn requests went to etcd (commits, failed
	// comparisons and fencing).
	Txns int64
	// Fenced is how many commits lost their answer and were resolved.
	Fenced int64
}

// Stats returns the counters.
func (db *DB) Stats() Stats {
	return Stats{
		Commits: db.stats.commits.Load(),
		Reruns:  db.stats.reruns.Load(),
		Reads:   db.stats.reads.Load(),
		Txns:    db.stats.txns.Load(),
		Fenced:  db.stats.fenced.Load(),
	}
}

// Close marks the DB closed. A client given to New stays open (its owner
// closes it); one Dial made is closed.
func (db *DB) Close() error {
	if db.closed.Swap(true) || !db.owned {
		return nil
	}
	return db.cli.Close()
}

// View runs fn on one snapshot of the keyspace.
func (db *DB) View(ctx context.Context, fn func(kv.Tx) error) error {
	return db.run(ctx, false, fn)
}

// Update runs fn and commits its writes if nothing it read changed since;
// otherwise fn runs again.
func (db *DB) Update(ctx context.Context, fn func(kv.Tx) error) error {
	return db.run(ctx, true, fn)
}

// errRerun makes run start the function again on a fresh snapshot (the
// snapshot was compacted away while the function read).
var errRerun = errors.New("etcdkv: snapshot compacted, run again")

func (db *DB) run(ctx context.Context, writable bool, fn func(kv.Tx) error) error {
	backoff := time.Millisecond
	for attempt := 1; ; attempt++ {
		if db.closed.Load() {
			return kv.ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		t := &tx{db: db, ctx: ctx, writable: writable}
		err := fn(t)
		if err == nil && writable && len(t.writes) > 0 {
			var ok bool
			ok, err = db.commit(ctx, t)
			if err == nil && !ok {
				err = errRerun
			}
		}
		if !errors.Is(err, errRerun) {
			if err == nil && writable && len(t.writes) > 0 {
				db.stats.commits.Add(1)
			}
			return err
		}
		if attempt >= db.opts.MaxAttempts {
			return fmt.Errorf("%w after %d attempts", kv.ErrConflict, attempt)
		}
		db.stats.reruns.Add(1)
		// Jittered backoff: writers racing for one key spread out.
		d := backoff/2 + mrand.N(backoff)
		if backoff < 64*time.Millisecond {
			backoff *= 2
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// rpcCtx bounds one request; unavailable says whether err means the
// cluster did not answer in time (rather than the caller giving up).
func (db *DB) rpcCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, db.opts.RequestTimeout)
}

func (db *DB) wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrTimeout) ||
		errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrLeaderChanged) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) || errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) {
		return fmt.Errorf("etcd %s: %w (%v)", op, kv.ErrUnavailable, err)
	}
	return fmt.Errorf("etcd %s: %w", op, err)
}

// getLease returns the lease tombstones and markers attach to: a new one
// every third of the TTL, so each lives at least two thirds of it.
func (db *DB) getLease(ctx context.Context, fresh bool) (clientv3.LeaseID, error) {
	db.leaseMu.Lock()
	defer db.leaseMu.Unlock()
	if !fresh && db.lease != 0 && time.Since(db.leaseAt) < db.opts.TombstoneTTL/3 {
		return db.lease, nil
	}
	rctx, cancel := db.rpcCtx(ctx)
	defer cancel()
	at := time.Now()
	ttl := int64((db.opts.TombstoneTTL + time.Second - 1) / time.Second)
	resp, err := db.cli.Grant(rctx, ttl)
	if err != nil {
		return 0, db.wrap(ctx, "grant lease", err)
	}
	db.lease, db.leaseAt = resp.ID, at
	return resp.ID, nil
}

// maxTxAge is how old a snapshot may be when its transaction commits: a
// tombstone made after the snapshot lives at least two thirds of the TTL.
func (db *DB) maxTxAge() time.Duration { return db.opts.TombstoneTTL / 2 }

func (db *DB) commit(ctx context.Context, t *tx) (bool, error) {
	if len(t.writes) > db.MaxTxOps() {
		return false, fmt.Errorf("%w: %d writes, at most %d", kv.ErrTooLarge, len(t.writes), db.MaxTxOps())
	}
	if t.rev != 0 && time.Since(t.readAt) > db.maxTxAge() {
		return false, nil // tombstones it relied on may be gone: run again
	}
	lease, err := db.getLease(ctx, false)
	if err != nil {
		return false, err
	}
	marker := db.root + "t/" + randomID()
	cmps := make([]clientv3.Cmp, 0, db.opts.MaxTxOps)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(marker), "=", 0))
	for _, s := range mergeSpans(t.reads, db.opts.MaxTxOps-1) {
		c := clientv3.Compare(clientv3.ModRevision(s.start), "<", t.rev+1)
		if s.end != s.start+"\x00" {
			c = c.WithRange(s.end)
		}
		cmps = append(cmps, c)
	}
	// Deletes (tombstones) and the marker hang on the lease.
	build := func(lease clientv3.LeaseID) []clientv3.Op {
		ops := make([]clientv3.Op, 0, len(t.writes)+1)
		for k, w := range t.writes {
			if w.del {
				ops = append(ops, clientv3.OpPut(k, "", clientv3.WithLease(lease)))
			} else {
				ops = append(ops, clientv3.OpPut(k, string(w.val)))
			}
		}
		return append(ops, clientv3.OpPut(marker, "", clientv3.WithLease(lease)))
	}
	ops := build(lease)
	for {
		rctx, cancel := db.rpcCtx(ctx)
		db.stats.txns.Add(1)
		resp, err := db.cli.Txn(rctx).If(cmps...).Then(ops...).Commit()
		cancel()
		switch {
		case err == nil:
			return resp.Succeeded, nil
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			// The lease expired under us (a long stall): nothing was
			// written; attach to a fresh one and send again.
			if lease, err = db.getLease(ctx, true); err != nil {
				return false, err
			}
			ops = build(lease)
			continue
		case definite(err):
			return false, db.wrap(ctx, "commit", err)
		}
		return db.resolve(ctx, marker, err)
	}
}

// definite reports whether etcd refused a Txn outright (nothing written).
func definite(err error) bool {
	for _, e := range []error{rpctypes.ErrTooManyOps, rpctypes.ErrRequestTooLarge, rpctypes.ErrDuplicateKey,
		rpctypes.ErrPermissionDenied, rpctypes.ErrUserEmpty, rpctypes.ErrInvalidAuthToken,
		rpctypes.ErrAuthNotEnabled, rpctypes.ErrKeyNotFound, rpctypes.ErrEmptyKey, rpctypes.ErrNoSpace} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// resolve settles a commit whose answer was lost: it creates the commit's
// marker if it is still absent, after which the commit can never apply,
// and otherwise the commit did apply.
func (db *DB) resolve(ctx context.Context, marker string, cause error) (bool, error) {
	db.stats.fenced.Add(1)
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(3 * db.opts.RequestTimeout)
	for {
		if ctx.Err() != nil {
			return false, fmt.Errorf("etcd commit: outcome unknown (%v): %w", cause, ctx.Err())
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("etcd commit: outcome unknown (%v): %w", cause, kv.ErrUnavailable)
		}
		lease, err := db.getLease(ctx, false)
		if err == nil {
			rctx, cancel := db.rpcCtx(ctx)
			db.stats.txns.Add(1)
			var resp *clientv3.TxnResponse
			resp, err = db.cli.Txn(rctx).
				If(clientv3.Compare(clientv3.CreateRevision(marker), "=", 0)).
				Then(clientv3.OpPut(marker, "fenced", clientv3.WithLease(lease))).
				Commit()
			cancel()
			if err == nil {
				// Succeeded: we made the marker, the lost commit is
				// fenced off and the function runs again. Otherwise the
				// marker is the commit's own.
				return !resp.Succeeded, nil
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		if wait < time.Second {
			wait *= 2
		}
	}
}

func randomID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// span is a key range [start, end) a transaction read.
type span struct{ start, end string }

// mergeSpans sorts and joins spans, then merges neighbours until at most
// max remain (a wider range may cause a spurious conflict, never hide one).
func mergeSpans(in []span, max int) []span {
	if len(in) == 0 {
		return nil
	}
	s := slices.Clone(in)
	slices.SortFunc(s, func(a, b span) int { return strings.Compare(a.start, b.start) })
	out := s[:1]
	for _, x := range s[1:] {
		last := &out[len(out)-1]
		if x.start <= last.end {
			if x.end > last.end {
				last.end = x.end
			}
			continue
		}
		out = append(out, x)
	}
	if len(out) <= max {
		return out
	}
	// Group consecutive spans into max ranges of about equal count.
	grouped := make([]span, 0, max)
	for i := range max {
		lo, hi := i*len(out)/max, (i+1)*len(out)/max
		if lo == hi {
			continue
		}
		grouped = append(grouped, span{out[lo].start, out[hi-1].end})
	}
	return grouped
}

// prefixEnd is the first key after every key that starts with p.
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00" // p is all 0xff: to the end of the keyspace
}

type write struct {
	val []byte
	del bool
}

type tx struct {
	db       *DB
	ctx      context.Context
	writable bool
	rev      int64 // snapshot revision; 0 before the first read
	readAt   time.Time
	reads    []span
	writes   map[string]write
	segs     []*seg
}

func (t *tx) bucketKey(bucket []byte, key []byte) string {
	return t.db.root + "b/" + string(bucket) + "/" + string(key)
}

// get reads one etcd key at the snapshot.
func (t *tx) get(full string) ([]byte, bool, error) {
	if w, ok := t.writes[full]; ok {
		if w.del {
			return nil, false, nil
		}
		return bytes.Clone(w.val), true, nil
	}
	t.reads = append(t.reads, span{full, full + "\x00"})
	if s := t.segAt(full); s != nil {
		i, found := s.find(full)
		if !found || s.kvs[i].Lease != 0 {
			return nil, false, nil
		}
		return append([]byte{}, s.kvs[i].Value...), true, nil
	}
	kvs, err := t.rangeRead(full, "", 0, false)
	if err != nil {
		return nil, false, err
	}
	if len(kvs) == 0 || kvs[0].Lease != 0 {
		return nil, false, nil
	}
	v := kvs[0].Value
	if v == nil {
		v = []byte{}
	}
	return v, true, nil
}

type kvPair struct {
	Key, Value []byte
	Lease      int64
}

// rangeRead reads [start, end) (one key when end is empty) at the snapshot,
// at most limit keys (0: all), descending when desc.
func (t *tx) rangeRead(start, end string, limit int64, desc bool) ([]kvPair, error) {
	if err := t.ctx.Err(); err != nil {
		return nil, err
	}
	first := t.rev == 0
	if first {
		t.readAt = time.Now()
	}
	// After the first read the snapshot's data never changes, so any
	// member that has applied it may answer (no round to the leader).
	serializable := !first
	for {
		opts := make([]clientv3.OpOption, 0, 5)
		if end != "" {
			opts = append(opts, clientv3.WithRange(end))
		}
		if limit > 0 {
			opts = append(opts, clientv3.WithLimit(limit))
		}
		if desc {
			opts = append(opts, clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
		}
		if !first {
			opts = append(opts, clientv3.WithRev(t.rev))
		}
		if serializable {
			opts = append(opts, clientv3.WithSerializable())
		}
		rctx, cancel := t.db.rpcCtx(t.ctx)
		t.db.stats.reads.Add(1)
		resp, err := t.db.cli.Get(rctx, start, opts...)
		cancel()
		if errors.Is(err, rpctypes.ErrFutureRev) && serializable {
			serializable = false // this member lags behind the snapshot
			continue
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil, errRerun
		}
		if err != nil {
			return nil, t.db.wrap(t.ctx, "read", err)
		}
		if first {
			t.rev = resp.Header.Revision
		}
		out := make([]kvPair, len(resp.Kvs))
		for i, p := range resp.Kvs {
			out[i] = kvPair{p.Key, p.Value, p.Lease}
		}
		return out, nil
	}
}

// seg is a stretch of the snapshot already read: every key in [lo, hi),
// in order. The snapshot never changes, so a later scan or Get inside it
// needs no request: an index join that seeks forward step by step costs a
// request per page, not per step.
type seg struct {
	lo, hi string
	kvs    []kvPair
}

// find is where key is, or would be, in the stretch.
func (s *seg) find(key string) (int, bool) {
	return slices.BinarySearchFunc(s.kvs, key, func(p kvPair, k string) int { return strings.Compare(string(p.Key), k) })
}

// segAt returns the read stretch that holds key, or nil.
func (t *tx) segAt(key string) *seg {
	for _, s := range t.segs {
		if s.lo <= key && key < s.hi {
			return s
		}
	}
	return nil
}

// ascendPage returns the snapshot's keys from next on (below hi), as many
// as one page or a read stretch holds, and where the following page starts.
func (t *tx) ascendPage(next, hi string) ([]kvPair, string, error) {
	if s := t.segAt(next); s != nil {
		i, _ := s.find(next)
		end := min(s.hi, hi)
		j := i
		for j < len(s.kvs) && string(s.kvs[j].Key) < end {
			j++
		}
		return s.kvs[i:j], end, nil
	}
	// A stretch that ends here grows: its next page is as large as it is.
	var prev *seg
	page := int64(firstPage)
	for _, s := range t.segs {
		if s.hi == next {
			prev = s
			page = min(max(page, int64(len(s.kvs))), maxPage)
		}
	}
	kvs, err := t.rangeRead(next, hi, page, false)
	if err != nil {
		return nil, "", err
	}
	end := hi
	if int64(len(kvs)) == page {
		end = string(kvs[len(kvs)-1].Key) + "\x00"
	}
	if prev != nil {
		prev.kvs = append(prev.kvs, kvs...)
		prev.hi = end
	} else {
		t.segs = append(t.segs, &seg{lo: next, hi: end, kvs: kvs})
	}
	return kvs, end, nil
}

func (t *tx) Get(bucket, key []byte) ([]byte, error) {
	v, _, err := t.get(t.bucketKey(bucket, key))
	return v, err
}

func (t *tx) put(full string, value []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if t.writes == nil {
		t.writes = map[string]write{}
	}
	t.writes[full] = write{val: bytes.Clone(value)}
	return nil
}

func (t *tx) Put(bucket, key, value []byte) error {
	if len(key) == 0 {
		return kv.ErrEmptyKey
	}
	if value == nil {
		value = []byte{}
	}
	return t.put(t.bucketKey(bucket, key), value)
}

func (t *tx) Delete(bucket, key []byte) error {
	if !t.writable {
		return kv.ErrReadOnly
	}
	if t.writes == nil {
		t.writes = map[string]write{}
	}
	t.writes[t.bucketKey(bucket, key)] = write{del: true}
	return nil
}

func (t *tx) NextSequence(bucket []byte) (uint64, error) {
	if !t.writable {
		return 0, kv.ErrReadOnly
	}
	full := t.db.root + "s/" + string(bucket)
	v, _, err := t.get(full)
	if err != nil {
		return 0, err
	}
	var n uint64
	if len(v) > 0 {
		if n, err = strconv.ParseUint(string(v), 10, 64); err != nil {
			return 0, fmt.Errorf("sequence of %s: %w", bucket, err)
		}
	}
	n++
	return n, t.put(full, strconv.AppendUint(nil, n, 10))
}

func (t *tx) Ascend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error {
	return t.scan(bucket, prefix, from, false, fn)
}

func (t *tx) Descend(bucket, prefix, from []byte, fn func(k, v []byte) (bool, error)) error {
	return t.scan(bucket, prefix, from, true, fn)
}

// Pages grow from a few keys (most scans stop early: a lookup, a first
// free address) to many (a listing), so short scans cost one small read.
const (
	firstPage = 16
	maxPage   = 1024
)

func (t *tx) scan(bucket, prefix, from []byte, desc bool, fn func(k, v []byte) (bool, error)) error {
	base := t.db.root + "b/" + string(bucket) + "/"
	lo, hi := base+string(prefix), prefixEnd(base+string(prefix))
	if from != nil {
		f := base + string(from)
		if !desc && f > lo {
			lo = f
		}
		if desc && f+"\x00" < hi {
			hi = f + "\x00"
		}
	}
	if lo >= hi {
		return nil
	}
	// The transaction's own writes in [lo, hi), merged with what etcd has.
	var mine []string
	for k := range t.writes {
		if k >= lo && k < hi {
			mine = append(mine, k)
		}
	}
	slices.Sort(mine)
	if desc {
		slices.Reverse(mine)
	}
	cut := len(base)
	page := int64(firstPage)
	var buf []kvPair
	next := lo // ascending: where the next page starts; descending: where it ends
	if desc {
		next = hi
	}
	more := true
	for {
		if len(buf) == 0 && more {
			var err error
			if desc {
				buf, err = t.rangeRead(lo, next, page, true)
				more = int64(len(buf)) == page
				if n := len(buf); n > 0 {
					next = string(buf[n-1].Key)
				}
				page = min(page*4, maxPage)
			} else {
				buf, next, err = t.ascendPage(next, hi)
				more = next < hi
			}
			if err != nil {
				return err
			}
		}
		// Here buf holds etcd's next keys unless etcd has no more, so
		// the smaller of buf[0] and mine[0] (larger, descending) is next.
		var fromEtcd, fromMine bool
		switch {
		case len(buf) > 0 && len(mine) > 0:
			ek := string(buf[0].Key)
			fromEtcd = ek == mine[0] || (ek < mine[0]) != desc
			fromMine = ek == mine[0] || !fromEtcd
		case len(buf) > 0:
			fromEtcd = true
		case len(mine) > 0:
			fromMine = true
		default:
			t.reads = append(t.reads, span{lo, hi})
			return nil
		}
		var k string
		var v []byte
		var live bool
		if fromEtcd {
			k, v, live = string(buf[0].Key), buf[0].Value, buf[0].Lease == 0
			buf = buf[1:]
		}
		if fromMine {
			k = mine[0]
			mine = mine[1:]
			w := t.writes[k]
			v, live = w.val, !w.del
		}
		if err := t.ctx.Err(); err != nil {
			return err
		}
		if !live {
			continue
		}
		if v == nil {
			v = []byte{}
		}
		goOn, err := fn([]byte(k[cut:]), v)
		if err != nil {
			return err
		}
		if !goOn {
			// What was read ends at k.
			if desc {
				t.reads = append(t.reads, span{k, hi})
			} else {
				t.reads = append(t.reads, span{lo, k + "\x00"})
			}
			return nil
		}
	}
}
