package devices

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Secondary indexes for listing a large inventory by attribute.
//
// The index bucket holds one empty-valued key per device and indexed field:
//
//	field (1 byte) | len(value) (2 bytes, big endian) | value | device UUID (16 bytes)
//
// The length prefix keeps one value's keys from running into another's. Keys
// of one field and value sort by device UUID, the order Devices pages in, so
// a filter on several fields is a merge of sorted key ranges (a leapfrog
// join of ordered scans) and a page costs about as many seeks as it has
// devices, however large the inventory. The site is indexed by the older
// bysite bucket (site\x00UUID), which joins the same way.
const (
	fieldState    byte = 't'
	fieldModel    byte = 'm'
	fieldFirmware byte = 'f'
	fieldBatch    byte = 'b'
	// fieldConvergence indexes enrolled devices by site and whether they
	// applied their current config ("site\x00applied" or "site\x00pending"),
	// so that a site's convergence is two key counts, not a decode of every
	// device.
	fieldConvergence byte = 'c'
	// fieldMAC indexes devices by the MAC they reported (NormalizeMAC), for
	// the DHCP server.
	fieldMAC byte = 'a'
	// fieldStateCode and fieldBatchUUID are fieldState and fieldBatch in
	// fewer bytes (index version 4): a known state as its one-byte code
	// (stateCode), a batch ID that is a canonical UUID as its 16 bytes.
	// Other values stay under the text fields, so neither form can be
	// mistaken for the other.
	fieldStateCode byte = 's'
	fieldBatchUUID byte = 'u'
)

// indexField is the field and value under which a value of field is
// indexed: fieldState and fieldBatch values in their short form where they
// have one.
func indexField(field byte, value string) (byte, string) {
	switch field {
	case fieldState:
		if c := stateCode(State(value)); c != 0 {
			return fieldStateCode, string([]byte{c})
		}
	case fieldBatch:
		if len(value) == 36 {
			if id, err := uuid.Parse(value); err == nil && id.String() == value {
				return fieldBatchUUID, string(id[:])
			}
		}
	}
	return field, value
}

// Convergence states in the fieldConvergence index.
const (
	convApplied = "applied"
	convPending = "pending"
)

func convergenceValue(site, state string) string { return site + "\x00" + state }

// indexVersion marks a store whose index bucket covers every device; Open
// builds the index once for stores written before it existed.
var keyIndexVersion = []byte("index_version")

const indexVersion = "4"

func indexPrefix(field byte, value string) []byte {
	k := make([]byte, 0, 3+len(value)+16)
	k = append(k, field)
	k = binary.BigEndian.AppendUint16(k, uint16(len(value)))
	return append(k, value...)
}

func indexKey(field byte, value string, id uuid.UUID) []byte {
	return append(indexPrefix(field, value), id[:]...)
}

// indexed lists the (field, value) pairs of d that have an index entry.
func indexed(d *Device) [][2]string {
	var out [][2]string
	conv := ""
	if d.Site != "" && (d.State == StateProvisioned || d.State == StateActive) {
		conv = convergenceValue(d.Site, convPending)
		if d.AppliedConfigVersion == d.ConfigVersion {
			conv = convergenceValue(d.Site, convApplied)
		}
	}
	mac, _ := NormalizeMAC(d.MAC)
	for _, fv := range [...]struct {
		f byte
		v string
	}{{fieldState, string(d.State)}, {fieldModel, d.Model}, {fieldFirmware, d.FirmwareVersion}, {fieldBatch, d.BatchID}, {fieldConvergence, conv}, {fieldMAC, mac}} {
		if fv.v != "" && len(fv.v) <= 0xFFFF {
			f, v := indexField(fv.f, fv.v)
			out = append(out, [2]string{string(f), v})
		}
	}
	return out
}

// putIndexes moves d's index entries from what old had to what d has.
func putIndexes(tx kv.Tx, old, d *Device) error {
	now := indexed(d)
	if old != nil {
		for _, fv := range indexed(old) {
			if fv[1] == valueOf(now, fv[0]) && old.ID == d.ID {
				continue
			}
			if err := tx.Delete(bucketIndex, indexKey(fv[0][0], fv[1], old.ID)); err != nil {
				return err
			}
		}
	}
	for _, fv := range now {
		if old != nil && old.ID == d.ID && valueOf(indexed(old), fv[0]) == fv[1] {
			continue
		}
		if err := tx.Put(bucketIndex, indexKey(fv[0][0], fv[1], d.ID), nil); err != nil {
			return err
		}
	}
	return nil
}

func valueOf(fvs [][2]string, field string) string {
	for _, fv := range fvs {
		if fv[0] == field {
			return fv[1]
		}
	}
	return ""
}

// deleteIndexes removes every index entry of d (its record is going away).
func deleteIndexes(tx kv.Tx, d *Device) error {
	if d.Site != "" {
		if err := tx.Delete(bucketBySite, siteDeviceKey(d.Site, d.ID)); err != nil {
			return err
		}
	}
	for _, fv := range indexed(d) {
		if err := tx.Delete(bucketIndex, indexKey(fv[0][0], fv[1], d.ID)); err != nil {
			return err
		}
	}
	return nil
}

// buildIndex indexes every device of a store written before the index (or
// this version of it) existed. It runs once, when New finds no current
// index version, in transactions of indexChunk devices whose keys are
// written in sorted order: one transaction over a million random keys took
// 12 minutes on bbolt, sorted chunks take seconds. A crash part-way leaves no
// version mark, so the next start begins again (writing an index key twice
// is harmless). Keys of the text form that version 4 indexes in a short
// form (indexField) are deleted as it goes.
func buildIndex(ctx context.Context, db kv.DB) error {
	var done bool
	if err := db.View(ctx, func(tx kv.Tx) error {
		v, err := tx.Get(bucketMeta, keyIndexVersion)
		done = string(v) == indexVersion
		return err
	}); err != nil || done {
		return err
	}
	var after []byte
	for {
		var keys, stale [][]byte
		var last []byte
		n := 0
		err := db.View(ctx, func(tx kv.Tx) error {
			keys, stale, last, n = keys[:0], stale[:0], nil, 0
			return tx.Ascend(bucketDevices, nil, after, func(k, v []byte) (bool, error) {
				if after != nil && bytes.Equal(k, after) {
					return true, nil
				}
				if n == indexChunk {
					return false, nil
				}
				var d Device
				if err := decodeDevice(v, &d); err != nil {
					return false, fmt.Errorf("device %x: %w", k, err)
				}
				d.ID = uuid.UUID(k)
				for _, fv := range indexed(&d) {
					keys = append(keys, indexKey(fv[0][0], fv[1], d.ID))
				}
				for _, fv := range [...]struct {
					f byte
					v string
				}{{fieldState, string(d.State)}, {fieldBatch, d.BatchID}} {
					if f, _ := indexField(fv.f, fv.v); f != fv.f && len(fv.v) <= 0xFFFF {
						stale = append(stale, indexKey(fv.f, fv.v, d.ID))
					}
				}
				last = bytes.Clone(k)
				n++
				return true, nil
			})
		})
		if err != nil {
			return fmt.Errorf("build device index: %w", err)
		}
		// The stale keys are deleted first, then the new ones put, each in
		// sorted order.
		slices.SortFunc(keys, bytes.Compare)
		slices.SortFunc(stale, bytes.Compare)
		ops := append(stale, keys...)
		finished := n < indexChunk
		// Sorted keys go in transactions as large as the engine takes (bbolt:
		// the whole chunk).
		per := kv.PerTx(db, 1, 1, len(ops)+1) // and the version mark
		for i := 0; i < len(ops) || i == 0; i += per {
			part := ops[i:min(i+per, len(ops))]
			final := finished && i+per >= len(ops)
			err = db.Update(ctx, func(tx kv.Tx) error {
				for j, k := range part {
					if i+j < len(stale) {
						if err := tx.Delete(bucketIndex, k); err != nil {
							return err
						}
						continue
					}
					if err := tx.Put(bucketIndex, k, nil); err != nil {
						return err
					}
				}
				if final {
					return tx.Put(bucketMeta, keyIndexVersion, []byte(indexVersion))
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("build device index: %w", err)
			}
		}
		if finished {
			return nil
		}
		after = last
	}
}

// indexChunk is the number of devices per index-building transaction (a
// variable so that tests can make chunks small).
var indexChunk = 50_000

// countIndex counts the devices with an index entry for field and value.
func countIndex(tx kv.Tx, field byte, value string) (int, error) {
	return countKeys(tx, bucketIndex, indexPrefix(field, value), 16)
}

// countKeys counts the keys with prefix that are exactly suffix bytes longer
// (0: any length).
func countKeys(tx kv.Tx, bucket, prefix []byte, suffix int) (int, error) {
	n := 0
	err := tx.Ascend(bucket, prefix, nil, func(k, _ []byte) (bool, error) {
		if suffix == 0 || len(k) == len(prefix)+suffix {
			n++
		}
		return true, nil
	})
	return n, err
}

// keyRange is the sorted run of keys sharing prefix in a bucket, each
// ending in a device UUID.
type keyRange struct {
	bucket []byte
	prefix []byte
	start  []byte // scratch: prefix and the ID a seek starts from
}

// seek returns the first device ID >= from in the range, or false when the
// range has none.
func (r *keyRange) seek(tx kv.Tx, from uuid.UUID) (id uuid.UUID, ok bool, err error) {
	r.start = append(append(r.start[:0], r.prefix...), from[:]...)
	err = tx.Ascend(r.bucket, r.prefix, r.start, func(k, _ []byte) (bool, error) {
		if len(k) != len(r.prefix)+16 {
			return true, nil // a longer value that starts with this one
		}
		id, ok = uuid.UUID(k[len(r.prefix):]), true
		return false, nil
	})
	return id, ok, err
}

// filterRanges returns the index ranges that a filter's indexed fields
// select, none when it has no indexed field.
func filterRanges(f Filter) []keyRange {
	var rs []keyRange
	if f.Site != "" {
		rs = append(rs, keyRange{bucket: bucketBySite, prefix: append([]byte(f.Site), 0)})
	}
	for _, fv := range [...]struct {
		f byte
		v string
	}{{fieldState, string(f.State)}, {fieldModel, f.Model}, {fieldFirmware, f.Firmware}, {fieldBatch, f.Batch}} {
		if fv.v != "" {
			f, v := indexField(fv.f, fv.v)
			rs = append(rs, keyRange{bucket: bucketIndex, prefix: indexPrefix(f, v)})
		}
	}
	return rs
}

// joinRanges calls fn, in UUID order from the first ID >= from, with every
// device ID present in all ranges, until fn returns false or an error.
func joinRanges(tx kv.Tx, rs []keyRange, from uuid.UUID, fn func(uuid.UUID) (bool, error)) error {
	switch len(rs) {
	case 0:
		return fmt.Errorf("%w: a join of no index ranges", ErrInvalid)
	case 1: // one range: a plain scan
		r := rs[0]
		return tx.Ascend(r.bucket, r.prefix, append(r.prefix[:len(r.prefix):len(r.prefix)], from[:]...), func(k, _ []byte) (bool, error) {
			if len(k) != len(r.prefix)+16 {
				return true, nil
			}
			return fn(uuid.UUID(k[len(r.prefix):]))
		})
	}
	cand := from
	for {
		agreed := 0
		for agreed < len(rs) {
			for i := range rs {
				id, ok, err := rs[i].seek(tx, cand)
				if err != nil || !ok {
					return err
				}
				if id != cand {
					cand, agreed = id, 0
					break
				}
				agreed++
			}
		}
		more, err := fn(cand)
		if err != nil || !more {
			return err
		}
		var ok bool
		if cand, ok = nextID(cand); !ok {
			return nil
		}
	}
}

// nextID is id + 1 as a 128-bit big-endian number; false past the last ID.
func nextID(id uuid.UUID) (uuid.UUID, bool) {
	for i := len(id) - 1; i >= 0; i-- {
		id[i]++
		if id[i] != 0 {
			return id, true
		}
	}
	return id, false
}
