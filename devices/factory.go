package devices

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// ImportRow is one device of a factory batch, already validated by the caller.
type ImportRow struct {
	Serial    string
	Model     string
	TokenHash []byte // SHA-256 of the claim token
	CodeHash  []byte // hash of the label's claim code, when it has one
}

// Row outcomes reported by ImportBatch.
const (
	RowCreated  = "created"  // a new device record
	RowExists   = "exists"   // the same serial, model and token hash were already registered
	RowRejected = "rejected" // see Reason
)

// RowResult is the outcome of one ImportRow.
type RowResult struct {
	Serial   string    `json:"serial"`
	Status   string    `json:"status"`
	DeviceID uuid.UUID `json:"device_id,omitzero"`
	Reason   string    `json:"reason,omitempty"`
}

// ImportBatch registers a factory batch in one transaction: every new row
// becomes a device in state manufactured (or claimed, when the batch is
// pre-assigned to a site), rows already registered identically are reported
// as existing (so a re-import is idempotent), and rows that clash with an
// existing registration are rejected with a reason. The batch record and its
// audit event are written only when at least one device was created.
func (s *Store) ImportBatch(ctx context.Context, batch Batch, rows []ImportRow, ev AuditEvent) (Batch, []RowResult, error) {
	results := make([]RowResult, len(rows))
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		clear(results)
		state := StateManufactured
		if batch.Site != "" {
			if _, err := getSite(tx, batch.Site); err != nil {
				return err
			}
			state = StateClaimed
		}
		now := time.Now().UTC()
		created := 0
		seen := make(map[string]int, len(rows))
		for i, r := range rows {
			res := &results[i]
			res.Serial = r.Serial
			if j, dup := seen[r.Serial]; dup {
				res.Status, res.Reason = RowRejected, fmt.Sprintf("duplicate of row %d in this batch", j+1)
				continue
			}
			seen[r.Serial] = i
			raw, err := tx.Get(bucketSerials, []byte(r.Serial))
			if err != nil {
				return err
			}
			if raw != nil {
				d, err := getDevice(tx, uuid.UUID(raw))
				if err != nil {
					return err
				}
				res.DeviceID = d.ID
				if d.Model == r.Model && bytes.Equal(d.TokenHash, r.TokenHash) {
					res.Status = RowExists
				} else {
					res.Status, res.Reason = RowRejected, "serial already registered with a different model or claim token"
				}
				continue
			}
			d := Device{ID: uuid.New(), Serial: r.Serial, Model: r.Model, BatchID: batch.ID, Site: batch.Site,
				State: state, TokenHash: r.TokenHash, ClaimCodeHash: r.CodeHash, CreatedAt: now, UpdatedAt: now, Rev: 1}
			if err := putDevice(tx, nil, &d); err != nil {
				return err
			}
			res.Status, res.DeviceID = RowCreated, d.ID
			created++
		}
		batch.Count = created
		if created == 0 {
			return nil
		}
		batch.CreatedAt = now
		if err := putJSON(tx, bucketBatches, []byte(batch.ID), batch); err != nil {
			return err
		}
		e := ev
		e.Detail = maps.Clone(ev.Detail)
		if e.Detail == nil {
			e.Detail = map[string]string{}
		}
		e.Detail["created"] = fmt.Sprint(created)
		return appendAudit(tx, e)
	})
	if err != nil {
		return Batch{}, nil, err
	}
	return batch, results, nil
}

// Load adds complete device records in one transaction, as a migration from
// another inventory or a capacity test does: each device keeps its fields
// (ID, state, identity, reported state), and one that is provisioned or
// active gets a lease from its site's pool (d.Lease is replaced). It changes
// nothing and fails when a device's ID or serial exists already, its site
// does not exist, or a pool runs out. One audit event records the load.
func (s *Store) Load(ctx context.Context, ds []Device, now time.Time, ev AuditEvent) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		sites := map[string]*Site{}
		for i := range ds {
			d := ds[i]
			if d.ID == uuid.Nil || d.Serial == "" {
				return fmt.Errorf("%w: device %d: id and serial are required", ErrInvalid, i)
			}
			byID, err := tx.Get(bucketDevices, d.ID[:])
			if err != nil {
				return err
			}
			bySerial, err := tx.Get(bucketSerials, []byte(d.Serial))
			if err != nil {
				return err
			}
			if byID != nil || bySerial != nil {
				return fmt.Errorf("device %s (%s): %w", d.ID, d.Serial, ErrExists)
			}
			d.Lease = nil
			if d.Site != "" {
				site, ok := sites[d.Site]
				if !ok {
					st, err := getSite(tx, d.Site)
					if err != nil {
						return err
					}
					site = &st
					sites[d.Site] = site
				}
				if d.State == StateProvisioned || d.State == StateActive {
					l, err := acquireLease(tx, site, &d, now)
					if err != nil {
						return fmt.Errorf("lease for %s in site %q: %w", d.Serial, d.Site, err)
					}
					d.Lease = &l
				}
			}
			if d.Rev == 0 {
				d.Rev = 1
			}
			if err := putDevice(tx, nil, &d); err != nil {
				return err
			}
		}
		e := ev
		e.Detail = maps.Clone(ev.Detail)
		if e.Detail == nil {
			e.Detail = map[string]string{}
		}
		e.Detail["devices"] = fmt.Sprint(len(ds))
		e.Time = now
		return appendAudit(tx, e)
	})
}
