package devices

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Layout is the inventory layout this version reads and writes. Layout 2:
// device records leave out what the rest of them gives back, with their
// state as a number (deviceRecord), and audit events number their actions
// and detail keys (auditRecord); the index is version 4. A version of an
// older layout cannot read what this one writes, so a cluster's replicas
// announce their layout and a replica does not start beside an older one.
const Layout = 2

var (
	bucketDevices = []byte("devices")
	bucketSerials = []byte("serials")
	bucketBySite  = []byte("bysite")
	bucketSites   = []byte("sites")
	bucketLeases  = []byte("leases")
	bucketPools   = []byte("pools")
	bucketBatches = []byte("batches")
	bucketTokens  = []byte("tokens")
	bucketMeta    = []byte("meta")
	bucketCerts   = []byte("certs")   // certificate serial (hex) -> device UUID, every certificate issued
	bucketRevoked = []byte("revoked") // certificate serial (hex) -> RevokedCert
	bucketHistory = []byte("history") // audit target \x00 auditlog key -> "" (a device's history; see audit.go)
	bucketIndex   = []byte("index")   // field, value, device UUID -> "" (see index.go)
	// Buckets lists every bucket the inventory uses, for engines that create
	// them up front (boltkv.Options.Buckets).
	Buckets = [][]byte{bucketDevices, bucketSerials, bucketBySite, bucketSites, bucketLeases,
		bucketPools, bucketBatches, bucketTokens, bucketAuditLog, bucketAuditHead, bucketMeta, bucketCerts, bucketRevoked, bucketShared, bucketCRL, bucketThrottles, bucketAuditAnchor,
		bucketHistory, bucketIndex, bucketJobs, bucketJobRows, bucketServerCerts, bucketRollouts, bucketLegacyAudit, bucketFactoryCAs}
)

// AppendBuckets are the buckets whose keys grow with time (the audit log:
// its keys start with the event's time), for engines that can pack them
// (boltkv.Options.AppendBuckets).
var AppendBuckets = [][]byte{bucketAuditLog}

// Store is the inventory over a storage engine (package kv). It is safe for
// concurrent use.
type Store struct {
	db kv.DB
}

// New opens the inventory held by db: it brings an older layout up to date
// (Migrations lists what that does) and returns the store, which owns db
// from then on.
func New(ctx context.Context, db kv.DB) (*Store, error) {
	if err := buildIndex(ctx, db); err != nil {
		return nil, fmt.Errorf("initialise store: %w", err)
	}
	if err := migrateAudit(ctx, db); err != nil {
		return nil, fmt.Errorf("initialise store: %w", err)
	}
	return &Store{db: db}, nil
}

// Migrations lists the changes New would make to an older store's layout
// (none for a current or an empty store), so that a caller can copy the
// store first.
func Migrations(ctx context.Context, db kv.DB) ([]string, error) {
	var out []string
	err := db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		v, err := tx.Get(bucketMeta, keyIndexVersion)
		if err != nil {
			return err
		}
		empty := true
		if err := tx.Ascend(bucketDevices, nil, nil, func(_, _ []byte) (bool, error) { empty = false; return false, nil }); err != nil {
			return err
		}
		if string(v) != indexVersion && !empty {
			out = append(out, "device index v"+indexVersion)
		}
		due, err := auditMigrationDue(tx)
		if due {
			out = append(out, "audit chains")
		}
		return err
	})
	return out, err
}

// Close closes the engine. It is safe to call more than once.
func (s *Store) Close() error {
	return s.db.Close()
}

// Ping reads from the store: it answers, and is open.
func (s *Store) Ping(ctx context.Context) error {
	return s.db.View(ctx, func(tx kv.Tx) error {
		_, err := tx.Get(bucketMeta, keyIndexVersion)
		return err
	})
}

// Check runs the engine's own consistency check, when it has one, and
// returns the first problem found.
func (s *Store) Check(ctx context.Context) error {
	c, ok := s.db.(kv.Checker)
	if !ok {
		return nil
	}
	if errs := c.Check(ctx); len(errs) > 0 {
		return fmt.Errorf("check store: %w", errs[0])
	}
	return nil
}

// getJSON decodes the record under key into v; false when there is none.
// It peeks (no copy): the decode is done before anything is written.
func getJSON(tx kv.Tx, bucket, key []byte, v any) (bool, error) {
	raw, err := kv.Peek(tx, bucket, key)
	if raw == nil || err != nil {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode record %q: %w", key, err)
	}
	return true, nil
}

func putJSON(tx kv.Tx, bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return tx.Put(bucket, key, raw)
}

func siteDeviceKey(site string, id uuid.UUID) []byte {
	k := make([]byte, 0, len(site)+1+16)
	k = append(k, site...)
	k = append(k, 0)
	return append(k, id[:]...)
}

func putDevice(tx kv.Tx, old *Device, d *Device) error {
	if old != nil && old.Site != d.Site && old.Site != "" {
		if err := tx.Delete(bucketBySite, siteDeviceKey(old.Site, d.ID)); err != nil {
			return err
		}
	}
	if d.Site != "" && (old == nil || old.Site != d.Site || old.ID != d.ID) {
		if err := tx.Put(bucketBySite, siteDeviceKey(d.Site, d.ID), nil); err != nil {
			return err
		}
	}
	if old == nil {
		if err := tx.Put(bucketSerials, []byte(d.Serial), d.ID[:]); err != nil {
			return err
		}
	}
	if d.CertSerial != "" && (old == nil || old.CertSerial != d.CertSerial) {
		if err := tx.Put(bucketCerts, []byte(d.CertSerial), d.ID[:]); err != nil {
			return err
		}
	}
	if err := putIndexes(tx, old, d); err != nil {
		return err
	}
	raw, err := encodeDevice(d)
	if err != nil {
		return err
	}
	return tx.Put(bucketDevices, d.ID[:], raw)
}

func getDevice(tx kv.Tx, id uuid.UUID) (Device, error) {
	var d Device
	raw, err := kv.Peek(tx, bucketDevices, id[:])
	if err != nil {
		return d, err
	}
	if raw == nil {
		return d, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return d, decodeDevice(raw, &d)
}

// mutate is the one read-modify-write of a device record: fn changes d (a
// copy of the stored record), then the record goes back with the next
// revision and the time of the change (unless now is zero: fn sets it), its
// indexes moved from what it was.
func mutate(tx kv.Tx, d Device, now time.Time, fn func(d *Device) error) (Device, error) {
	old := d
	if err := fn(&d); err != nil {
		return Device{}, err
	}
	d.Rev = old.Rev + 1
	if !now.IsZero() {
		d.UpdatedAt = now
	}
	if err := putDevice(tx, &old, &d); err != nil {
		return Device{}, err
	}
	return d, nil
}

// mutateDevice reads device id and mutates it.
func mutateDevice(tx kv.Tx, id uuid.UUID, now time.Time, fn func(d *Device) error) (Device, error) {
	d, err := getDevice(tx, id)
	if err != nil {
		return Device{}, err
	}
	return mutate(tx, d, now, fn)
}

// Device returns the device with the given ID.
func (s *Store) Device(ctx context.Context, id uuid.UUID) (Device, error) {
	var d Device
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		d, err = getDevice(tx, id)
		return err
	})
	return d, err
}

// decoyRecord is decoded when a serial is unknown, so that looking up an
// unknown serial costs what looking up a known one does (claim checks must not
// reveal which serials exist through their timing).
var decoyRecord, _ = encodeDevice(&Device{Serial: "DECOY-SERIAL-0000", Model: "DECOY-MODEL", State: StateClaimed,
	Site: "decoy-site", BatchID: "00000000-0000-0000-0000-000000000000", TokenHash: make([]byte, 32), Rev: 1})

// DeviceBySerial returns the device with the given serial.
func (s *Store) DeviceBySerial(ctx context.Context, serial string) (Device, error) {
	var d Device
	err := s.db.View(ctx, func(tx kv.Tx) error {
		raw, err := tx.Get(bucketSerials, []byte(serial))
		if err != nil {
			return err
		}
		if len(raw) != 16 {
			var decoy Device
			_ = decodeDevice(decoyRecord, &decoy)
			return fmt.Errorf("serial %q: %w", serial, ErrNotFound)
		}
		d, err = getDevice(tx, uuid.UUID(raw))
		return err
	})
	return d, err
}

// Filter selects devices in Devices; empty fields match everything.
type Filter struct {
	Site         string
	State        State
	Model        string
	Firmware     string
	Batch        string
	SeenAfter    time.Time // last state report after this
	NotSeenSince time.Time // no state report since this (or never)
	After        uuid.UUID // cursor: list devices whose ID sorts after this one
	Limit        int       // default 100, at most 1000
}

// Match reports whether d passes the filter (the cursor and limit aside).
func (f Filter) Match(d *Device) bool {
	switch {
	case f.Site != "" && d.Site != f.Site,
		f.State != "" && d.State != f.State,
		f.Model != "" && d.Model != f.Model,
		f.Firmware != "" && d.FirmwareVersion != f.Firmware,
		f.Batch != "" && d.BatchID != f.Batch,
		!f.SeenAfter.IsZero() && !d.LastSeen.After(f.SeenAfter),
		!f.NotSeenSince.IsZero() && d.LastSeen.After(f.NotSeenSince):
		return false
	}
	return true
}

// Devices lists devices in ID order. next is the cursor for the following page,
// uuid.Nil when there is none.
//
// A filter on site, state, model, firmware or batch walks the matching index
// ranges together (see index.go), so a page costs about as much in a million
// devices as in a thousand. The last-seen filters are checked on the records
// the indexes yield; alone, they scan the inventory.
func (s *Store) Devices(ctx context.Context, f Filter) (list []Device, next uuid.UUID, err error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	from, ok := f.After, true
	if f.After != uuid.Nil {
		from, ok = nextID(f.After)
	}
	if !ok {
		return nil, uuid.Nil, nil
	}
	err = s.db.View(ctx, func(tx kv.Tx) error {
		list, next = list[:0], uuid.Nil
		// add takes a candidate record; false once the page is full.
		add := func(raw []byte) (bool, error) {
			var d Device
			if err := decodeDevice(raw, &d); err != nil {
				return false, err
			}
			if !f.Match(&d) {
				return true, nil
			}
			if len(list) == f.Limit {
				next = list[len(list)-1].ID
				return false, nil
			}
			list = append(list, d)
			return true, nil
		}
		if rs := filterRanges(f); len(rs) > 0 {
			return joinRanges(tx, rs, from, func(id uuid.UUID) (bool, error) {
				raw, err := kv.Peek(tx, bucketDevices, id[:])
				if err != nil {
					return false, err
				}
				if raw == nil {
					return false, fmt.Errorf("index names device %s, which does not exist", id)
				}
				return add(raw)
			})
		}
		return tx.Ascend(bucketDevices, nil, from[:], func(_, v []byte) (bool, error) { return add(v) })
	})
	return list, next, err
}

// PutToken stores an API token under the hash of its secret.
func (s *Store) PutToken(ctx context.Context, hash []byte, t Token, ev AuditEvent) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		if err := putJSON(tx, bucketTokens, hash, t); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// PutTokenOnce stores t under hash unless a token named t.Name exists (the
// cluster's bootstrap admin token, which the first replica makes); false
// when one does.
func (s *Store) PutTokenOnce(ctx context.Context, hash []byte, t Token, ev AuditEvent) (bool, error) {
	stored := false
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		stored = false
		named := false
		if err := tx.Ascend(bucketTokens, nil, nil, func(_, v []byte) (bool, error) {
			var x Token
			if err := json.Unmarshal(v, &x); err != nil {
				return false, fmt.Errorf("decode token: %w", err)
			}
			named = x.Name == t.Name
			return !named, nil
		}); err != nil || named {
			return err
		}
		if err := putJSON(tx, bucketTokens, hash, t); err != nil {
			return err
		}
		stored = true
		return appendAudit(tx, ev)
	})
	return stored, err
}

// TokenByHash returns the token stored under hash.
func (s *Store) TokenByHash(ctx context.Context, hash []byte) (Token, error) {
	var t Token
	err := s.db.View(ctx, func(tx kv.Tx) error {
		ok, err := getJSON(tx, bucketTokens, hash, &t)
		if err == nil && !ok {
			err = fmt.Errorf("token: %w", ErrNotFound)
		}
		return err
	})
	return t, err
}

func jsonUnmarshal(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("decode record: %w", err)
	}
	return nil
}

// Digest hashes every record of the inventory (the jobs' own bookkeeping
// aside: a job that changed nothing still records that it ran). Two equal
// digests mean nothing was written in between; tests use it to prove a
// refusal changed nothing.
func (s *Store) Digest(ctx context.Context) ([32]byte, error) {
	var out [32]byte
	err := s.db.View(ctx, func(tx kv.Tx) error {
		h := sha256.New()
		for _, name := range Buckets {
			if bytes.Equal(name, bucketJobs) || bytes.Equal(name, bucketJobRows) {
				continue
			}
			h.Write(name)
			if err := tx.Ascend(name, nil, nil, func(k, v []byte) (bool, error) {
				h.Write(k)
				h.Write(v)
				return true, nil
			}); err != nil {
				return err
			}
		}
		copy(out[:], h.Sum(nil))
		return nil
	})
	return out, err
}

// UpdateDevice applies fn to the stored device in one transaction. fn returns
// the audit event to append (nil for none), or an error to change nothing.
// Concurrent calls share commits, so fn may run more than once.
func (s *Store) UpdateDevice(ctx context.Context, id uuid.UUID, fn func(d *Device) (*AuditEvent, error)) (Device, error) {
	var out Device
	err := kv.Batch(ctx, s.db, func(tx kv.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		var ev *AuditEvent
		d, err = mutate(tx, d, time.Time{}, func(d *Device) (err error) {
			ev, err = fn(d)
			return err
		})
		if err != nil {
			return err
		}
		if ev != nil {
			if err := appendAudit(tx, *ev); err != nil {
				return err
			}
		}
		out = d
		return nil
	})
	return out, err
}

// AppendAudit records an event that goes with no other change.
func (s *Store) AppendAudit(ctx context.Context, ev AuditEvent) error {
	return s.db.Update(ctx, func(tx kv.Tx) error { return appendAudit(tx, ev) })
}

// Tokens lists the API tokens (never their secrets, which are not stored).
func (s *Store) Tokens(ctx context.Context) ([]Token, error) {
	return listJSON[Token](ctx, s, bucketTokens)
}

// DeleteToken revokes the token with the given ID.
func (s *Store) DeleteToken(ctx context.Context, id string, ev AuditEvent) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		var key []byte
		err := tx.Ascend(bucketTokens, nil, nil, func(k, v []byte) (bool, error) {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return false, fmt.Errorf("decode token: %w", err)
			}
			if t.ID == id {
				key = bytes.Clone(k)
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		if key == nil {
			return fmt.Errorf("token %q: %w", id, ErrNotFound)
		}
		if err := tx.Delete(bucketTokens, key); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// ErrNoSnapshot is returned by Backup when the engine cannot copy itself.
var ErrNoSnapshot = errors.New("the storage engine cannot take a snapshot")

// Backup hands out a consistent snapshot of the whole store, taken while
// writers go on, in the engine's own format: emit is called with the
// snapshot's size and a function that writes it.
func (s *Store) Backup(ctx context.Context, emit func(size int64, write func(io.Writer) error) error) error {
	sn, ok := s.db.(kv.Snapshotter)
	if !ok {
		return ErrNoSnapshot
	}
	return sn.Snapshot(ctx, emit)
}

// listJSON decodes every record of a bucket, in key order.
func listJSON[T any](ctx context.Context, s *Store, bucket []byte) ([]T, error) {
	var out []T
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		return tx.Ascend(bucket, nil, nil, func(k, v []byte) (bool, error) {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return false, fmt.Errorf("decode %s record %q: %w", bucket, k, err)
			}
			out = append(out, x)
			return true, nil
		})
	})
	return out, err
}

var keyCARoot = []byte("ca_root")

// BindCA ties the inventory to the CA whose root certificate hashes to
// fingerprint: the first call records it, later calls with another root fail
// with ErrOtherCA. Replicas sharing one inventory must share its CA (a
// device certificate from one must be good on every other).
func (s *Store) BindCA(ctx context.Context, fingerprint []byte) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		v, err := tx.Get(bucketMeta, keyCARoot)
		if err != nil {
			return err
		}
		switch {
		case v == nil:
			return tx.Put(bucketMeta, keyCARoot, fingerprint)
		case !bytes.Equal(v, fingerprint):
			return fmt.Errorf("%w: its root's SHA-256 is %x, this CA's is %x", ErrOtherCA, v, fingerprint)
		}
		return nil
	})
}

// bucketShared holds what every replica of a cluster needs from a data
// directory: the CA's certificates and encrypted keys, the firmware signing
// key (encrypted). Name -> file content.
var bucketShared = []byte("shared")

// SharedFiles returns the stored files of names that exist.
func (s *Store) SharedFiles(ctx context.Context, names []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(ctx, func(tx kv.Tx) error {
		clear(out)
		for _, n := range names {
			v, err := tx.Get(bucketShared, []byte(n))
			if err != nil {
				return err
			}
			if v != nil {
				out[n] = v
			}
		}
		return nil
	})
	return out, err
}

// SharedPrefix returns every shared file whose name starts with prefix.
func (s *Store) SharedPrefix(ctx context.Context, prefix string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(ctx, func(tx kv.Tx) error {
		clear(out)
		return tx.Ascend(bucketShared, []byte(prefix), nil, func(k, v []byte) (bool, error) {
			out[string(k)] = bytes.Clone(v)
			return true, nil
		})
	})
	return out, err
}

// ShareFiles stores files, all or none: when any of them is stored already
// (another replica was first) it stores nothing and returns false.
func (s *Store) ShareFiles(ctx context.Context, files map[string][]byte, ev AuditEvent) (bool, error) {
	stored := false
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		stored = false
		names := make([]string, 0, len(files))
		for n := range files {
			v, err := tx.Get(bucketShared, []byte(n))
			if err != nil || v != nil {
				return err
			}
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := tx.Put(bucketShared, []byte(n), files[n]); err != nil {
				return err
			}
		}
		stored = true
		return appendAudit(tx, ev.with("files", strings.Join(names, " ")))
	})
	return stored, err
}

var (
	bucketCRL = []byte("crl")     // the cluster's current CRL, and its number sequence
	keyCRL    = []byte("current") // 8-byte number, then the DER list
	keyCRLSeq = []byte("last")    // the last number reserved
)

// NextCRLNumber reserves a CRL number no CRL of this inventory had before:
// at least floor (the single-node server numbers CRLs by time, so a
// cluster does too) and above every number reserved so far, by any replica.
func (s *Store) NextCRLNumber(ctx context.Context, floor uint64) (uint64, error) {
	var n uint64
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		v, err := tx.Get(bucketCRL, keyCRLSeq)
		if err != nil {
			return err
		}
		n = floor
		if len(v) == 8 {
			n = max(n, binary.BigEndian.Uint64(v)+1)
		}
		return tx.Put(bucketCRL, keyCRLSeq, binary.BigEndian.AppendUint64(nil, n))
	})
	return n, err
}

// PutCRL stores a signed CRL as the current one unless a CRL with a higher
// number is stored already; false then.
func (s *Store) PutCRL(ctx context.Context, number uint64, der []byte) (bool, error) {
	stored := false
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		stored = false
		v, err := tx.Get(bucketCRL, keyCRL)
		if err != nil {
			return err
		}
		if len(v) >= 8 && binary.BigEndian.Uint64(v) >= number {
			return nil
		}
		stored = true
		return tx.Put(bucketCRL, keyCRL, append(binary.BigEndian.AppendUint64(nil, number), der...))
	})
	return stored, err
}

// CRL returns the stored CRL and its number; 0 and nil when there is none.
func (s *Store) CRL(ctx context.Context) (uint64, []byte, error) {
	var v []byte
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		v, err = tx.Get(bucketCRL, keyCRL)
		return err
	})
	if err != nil || len(v) < 8 {
		return 0, nil, err
	}
	return binary.BigEndian.Uint64(v), v[8:], nil
}

// bucketThrottles holds the claim and enrollment throttles of a cluster:
// throttle key -> Throttle (enroll.ThrottleStore).
var bucketThrottles = []byte("throttles")

// Throttle returns a throttle key's state.
func (s *Store) Throttle(ctx context.Context, key string) (Throttle, bool, error) {
	var t Throttle
	var ok bool
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		ok, err = getJSON(tx, bucketThrottles, []byte(key), &t)
		return err
	})
	return t, ok, err
}

// UpdateThrottle changes a throttle key's state (zero when absent) through
// fn, deleting it when fn returns false.
func (s *Store) UpdateThrottle(ctx context.Context, key string, fn func(t *Throttle) bool) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		var t Throttle
		if _, err := getJSON(tx, bucketThrottles, []byte(key), &t); err != nil {
			return err
		}
		if !fn(&t) {
			return tx.Delete(bucketThrottles, []byte(key))
		}
		return putJSON(tx, bucketThrottles, []byte(key), t)
	})
}

// SweepThrottles deletes throttle records neither blocked at now nor
// failed within window (the elected replica's periodic work), a chunk of
// writes per transaction; it returns how many it deleted.
func (s *Store) SweepThrottles(ctx context.Context, now time.Time, window time.Duration) (int, error) {
	n := 0
	chunk := kv.PerTx(s.db, 1, 0, 1000)
	var from []byte
	for {
		var dead [][]byte
		more := false
		err := s.db.Update(ctx, func(tx kv.Tx) error {
			dead, more = dead[:0], false
			err := tx.Ascend(bucketThrottles, nil, from, func(k, v []byte) (bool, error) {
				var t Throttle
				if err := json.Unmarshal(v, &t); err != nil || (now.Sub(t.Last) > window && !now.Before(t.Blocked)) {
					dead = append(dead, bytes.Clone(k))
				}
				if len(dead) == chunk {
					more = true
					return false, nil
				}
				return true, nil
			})
			if err != nil {
				return err
			}
			// Checked and deleted in one transaction: a key that failed
			// again meanwhile is not lost.
			for _, k := range dead {
				if err := tx.Delete(bucketThrottles, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += len(dead)
		if !more {
			return n, nil
		}
		from = append(dead[len(dead)-1], 0)
	}
}
