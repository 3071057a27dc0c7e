package devices

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	bucketDevices = []byte("devices")
	bucketSerials = []byte("serials")
	bucketBySite  = []byte("bysite")
	bucketSites   = []byte("sites")
	bucketLeases  = []byte("leases")
	bucketPools   = []byte("pools")
	bucketBatches = []byte("batches")
	bucketTokens  = []byte("tokens")
	bucketAudit   = []byte("audit")
	bucketMeta    = []byte("meta")
	bucketCerts   = []byte("certs")   // certificate serial (hex) -> device UUID, every certificate issued
	bucketRevoked = []byte("revoked") // certificate serial (hex) -> RevokedCert
	bucketHistory = []byte("history") // audit target \x00 seq (8B) -> "" (a device's history)
	bucketIndex   = []byte("index")   // field, value, device UUID -> "" (see index.go)
	allBuckets    = [][]byte{bucketDevices, bucketSerials, bucketBySite, bucketSites, bucketLeases,
		bucketPools, bucketBatches, bucketTokens, bucketAudit, bucketMeta, bucketCerts, bucketRevoked, bucketHistory, bucketIndex}

	keyAuditHead = []byte("audit_head") // 8-byte seq + hex hash of the newest audit event
)

// Options tune how the store file is opened.
type Options struct {
	// LockTimeout bounds the wait for the file lock; another process holding it
	// makes Open fail with ErrLocked. Default 1s.
	LockTimeout time.Duration
	// MaxBatchDelay is how long enrollment commits wait to share one fsync. Default 2ms.
	MaxBatchDelay time.Duration
}

// Store is the bbolt-backed inventory. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the inventory file at path (its directory is created 0700).
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = time.Second
	}
	if opts.MaxBatchDelay == 0 {
		opts.MaxBatchDelay = 2 * time.Millisecond
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
	db.MaxBatchDelay = opts.MaxBatchDelay
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = buildIndex(db)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("initialise store: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the file. It is safe to call more than once.
func (s *Store) Close() error {
	return s.db.Close()
}

// Ping reads from the store: it answers, and its file is open.
func (s *Store) Ping() error {
	return s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketMeta) == nil {
			return errors.New("store has no meta bucket")
		}
		return nil
	})
}

// Check runs bbolt's consistency check and returns the first problem found.
func (s *Store) Check() error {
	return s.db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return fmt.Errorf("check store: %w", err)
		}
		return nil
	})
}

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil { // Unmarshal copies: nothing points into the mmap
		return true, fmt.Errorf("decode record %q: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put(key, raw)
}

func appendAudit(tx *bolt.Tx, ev AuditEvent) error {
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	meta := tx.Bucket(bucketMeta)
	if head := meta.Get(keyAuditHead); len(head) > 8 {
		ev.PrevHash = string(head[8:])
	}
	if ev.Hash, err = HashAuditEvent(ev); err != nil {
		return err
	}
	if err := putJSON(b, u64(seq), ev); err != nil {
		return err
	}
	if ev.Target != "" {
		if err := tx.Bucket(bucketHistory).Put(append(append([]byte(ev.Target), 0), u64(seq)...), nil); err != nil {
			return err
		}
	}
	return meta.Put(keyAuditHead, append(u64(seq), ev.Hash...))
}

func u64(v uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], v)
	return k[:]
}

func siteDeviceKey(site string, id uuid.UUID) []byte {
	k := make([]byte, 0, len(site)+1+16)
	k = append(k, site...)
	k = append(k, 0)
	return append(k, id[:]...)
}

func putDevice(tx *bolt.Tx, old *Device, d *Device) error {
	if old != nil && old.Site != d.Site && old.Site != "" {
		if err := tx.Bucket(bucketBySite).Delete(siteDeviceKey(old.Site, d.ID)); err != nil {
			return err
		}
	}
	if d.Site != "" {
		if err := tx.Bucket(bucketBySite).Put(siteDeviceKey(d.Site, d.ID), nil); err != nil {
			return err
		}
	}
	if old == nil {
		if err := tx.Bucket(bucketSerials).Put([]byte(d.Serial), d.ID[:]); err != nil {
			return err
		}
	}
	if d.CertSerial != "" && (old == nil || old.CertSerial != d.CertSerial) {
		if err := tx.Bucket(bucketCerts).Put([]byte(d.CertSerial), d.ID[:]); err != nil {
			return err
		}
	}
	if err := putIndexes(tx, old, d); err != nil {
		return err
	}
	return putJSON(tx.Bucket(bucketDevices), d.ID[:], d)
}

func getDevice(tx *bolt.Tx, id uuid.UUID) (Device, error) {
	var d Device
	ok, err := getJSON(tx.Bucket(bucketDevices), id[:], &d)
	if err != nil {
		return d, err
	}
	if !ok {
		return d, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return d, nil
}

// Device returns the device with the given ID.
func (s *Store) Device(id uuid.UUID) (Device, error) {
	var d Device
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		d, err = getDevice(tx, id)
		return err
	})
	return d, err
}

// decoyRecord is decoded when a serial is unknown, so that looking up an
// unknown serial costs what looking up a known one does (claim checks must not
// reveal which serials exist through their timing).
var decoyRecord, _ = json.Marshal(Device{Serial: "DECOY-SERIAL-0000", Model: "DECOY-MODEL", State: StateClaimed,
	Site: "decoy-site", BatchID: "00000000-0000-0000-0000-000000000000", TokenHash: make([]byte, 32), Rev: 1})

// DeviceBySerial returns the device with the given serial.
func (s *Store) DeviceBySerial(serial string) (Device, error) {
	var d Device
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSerials).Get([]byte(serial))
		if len(raw) != 16 {
			var decoy Device
			_ = json.Unmarshal(decoyRecord, &decoy)
			return fmt.Errorf("serial %q: %w", serial, ErrNotFound)
		}
		var err error
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
func (s *Store) Devices(f Filter) (list []Device, next uuid.UUID, err error) {
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
	// add takes a candidate record; false once the page is full.
	add := func(raw []byte) (bool, error) {
		var d Device
		if err := json.Unmarshal(raw, &d); err != nil {
			return false, fmt.Errorf("decode device: %w", err)
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
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		if rs := filterRanges(tx, f); len(rs) > 0 {
			return joinRanges(rs, from, func(id uuid.UUID) (bool, error) {
				raw := b.Get(id[:])
				if raw == nil {
					return false, fmt.Errorf("index names device %s, which does not exist", id)
				}
				return add(raw)
			})
		}
		c := b.Cursor()
		for k, v := c.Seek(from[:]); k != nil; k, v = c.Next() {
			if more, err := add(v); err != nil || !more {
				return err
			}
		}
		return nil
	})
	return list, next, err
}

// Audit returns up to limit audit events with a sequence number above after.
func (s *Store) Audit(after uint64, limit int) ([]AuditEvent, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var out []AuditEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(u64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var ev AuditEvent
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("decode audit event %x: %w", k, err)
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// PutToken stores an API token under the hash of its secret.
func (s *Store) PutToken(hash []byte, t Token, ev AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := putJSON(tx.Bucket(bucketTokens), hash, t); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// TokenByHash returns the token stored under hash.
func (s *Store) TokenByHash(hash []byte) (Token, error) {
	var t Token
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketTokens), hash, &t)
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

// Digest hashes every record of the store. Two equal digests mean nothing
// was written in between; tests use it to prove a refusal changed nothing.
func (s *Store) Digest() ([32]byte, error) {
	h := sha256.New()
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			h.Write(name)
			if err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				h.Write(k)
				h.Write(v)
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out, err
}

// UpdateDevice applies fn to the stored device in one transaction. fn returns
// the audit event to append (nil for none), or an error to change nothing.
// Concurrent calls share fsyncs (bbolt Batch), so fn may run more than once.
func (s *Store) UpdateDevice(id uuid.UUID, fn func(d *Device) (*AuditEvent, error)) (Device, error) {
	var out Device
	err := s.db.Batch(func(tx *bolt.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		old := d
		ev, err := fn(&d)
		if err != nil {
			return err
		}
		d.Rev = old.Rev + 1
		if err := putDevice(tx, &old, &d); err != nil {
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
func (s *Store) AppendAudit(ev AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error { return appendAudit(tx, ev) })
}

// Tokens lists the API tokens (never their secrets, which are not stored).
func (s *Store) Tokens() ([]Token, error) { return listJSON[Token](s, bucketTokens) }

// DeleteToken revokes the token with the given ID.
func (s *Store) DeleteToken(id string, ev AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("decode token: %w", err)
			}
			if t.ID == id {
				if err := b.Delete(k); err != nil {
					return err
				}
				return appendAudit(tx, ev)
			}
		}
		return fmt.Errorf("token %q: %w", id, ErrNotFound)
	})
}

// Backup hands out a consistent snapshot of the whole store, taken in one
// read transaction while writers go on: emit is called with the snapshot's
// size and a function that writes it.
func (s *Store) Backup(emit func(size int64, write func(io.Writer) error) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		return emit(tx.Size(), func(w io.Writer) error {
			_, err := tx.WriteTo(w)
			return err
		})
	})
}

// History returns the audit events about a target (a device serial, a site
// name), oldest first, at most limit.
func (s *Store) History(target string, limit int) ([]AuditEvent, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	var out []AuditEvent
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := append([]byte(target), 0)
		c := tx.Bucket(bucketHistory).Cursor()
		audit := tx.Bucket(bucketAudit)
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8 && len(out) < limit; k, _ = c.Next() {
			var ev AuditEvent
			if _, err := getJSON(audit, k[len(prefix):], &ev); err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// listJSON decodes every record of a bucket, in key order.
func listJSON[T any](s *Store, bucket []byte) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(k, v []byte) error {
			var x T
			if err := json.Unmarshal(v, &x); err != nil {
				return fmt.Errorf("decode %s record %q: %w", bucket, k, err)
			}
			out = append(out, x)
			return nil
		})
	})
	return out, err
}
