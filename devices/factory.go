package devices

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
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
	// BootstrapPSK is the device's LwM2M bootstrap PSK, sealed by the
	// caller; "" for none.
	BootstrapPSK string
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

// A factory import is a job too (JobImport): StartImport stages the rows
// under the job in chunks and then lets it run; each chunk registers the
// next rows in one transaction and records their outcomes beside them, so
// a crash part-way resumes at the next row and creates each device once.
//
//	jobrows   job ID \x00 row index (8B) -> importRow   (the row and, once done, its outcome)
//	          job ID \x01 serial          -> row index  (rows of this import registered so far)
var bucketJobRows = []byte("jobrows")

type importRow struct {
	Row    ImportRow `json:"row"`
	Result RowResult `json:"result,omitzero"`
}

func jobRowKey(job string, i int) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(job), 0), uint64(i))
}

func jobSerialKey(job, serial string) []byte { return append(append([]byte(job), 1), serial...) }

// ImportBatch registers a factory batch: every new row becomes a device in
// state manufactured (or claimed, when the batch is pre-assigned to a
// site), rows already registered identically are reported as existing (so
// a re-import is idempotent), and rows that clash with an existing
// registration are rejected with a reason. The batch record and its audit
// event are written only when at least one device was created. It runs the
// import job to its end (StartImport, RunJobChunk, ImportResults).
func (s *Store) ImportBatch(ctx context.Context, batch Batch, rows []ImportRow, ev AuditEvent) (Batch, []RowResult, error) {
	job, err := s.StartImport(ctx, batch, rows, ev, time.Now())
	if err != nil {
		return Batch{}, nil, err
	}
	for job.State == JobRunning {
		if job, _, err = s.RunJobChunk(ctx, job.ID, s.ChunkSize(), time.Now()); err != nil {
			return Batch{}, nil, err
		}
	}
	return s.FinishImport(ctx, job.ID)
}

// StartImport stages a factory import as a job (JobImport): the rows are
// written under the job in chunks the engine takes, then the job runs. A
// job whose staging did not finish never runs (AbandonImport clears it).
func (s *Store) StartImport(ctx context.Context, batch Batch, rows []ImportRow, ev AuditEvent, now time.Time) (Job, error) {
	if batch.ID == "" {
		return Job{}, fmt.Errorf("%w: batch: an ID is required", ErrInvalid)
	}
	if batch.Site != "" {
		if _, err := s.Site(ctx, batch.Site); err != nil {
			return Job{}, err
		}
	}
	b := batch
	job := Job{ID: uuid.NewString(), Kind: JobImport, State: JobStaging, Batch: &b, Event: ev, Total: len(rows),
		CreatedAt: now.UTC(), UpdatedAt: now.UTC()}
	per := kv.PerTx(s.db, 1, 2, 1000) // a row each, and the job record
	for i := 0; i < len(rows) || i == 0; i += per {
		part := rows[i:min(i+per, len(rows))]
		last := i+per >= len(rows)
		err := s.db.Update(ctx, func(tx kv.Tx) error {
			for k, r := range part {
				if err := putJSON(tx, bucketJobRows, jobRowKey(job.ID, i+k), importRow{Row: r}); err != nil {
					return err
				}
			}
			j := job
			if last {
				j.State = JobRunning
			}
			return putJSON(tx, bucketJobs, []byte(job.ID), j)
		})
		if err != nil {
			return Job{}, fmt.Errorf("stage import: %w", err)
		}
		if last {
			job.State = JobRunning
		}
	}
	return job, nil
}

// importChunk registers the job's next rows (at most n) in tx and returns
// the devices it created.
func importChunk(tx kv.Tx, job *Job, n int, now time.Time) ([]Device, error) {
	batch := job.Batch
	state := StateManufactured
	if batch.Site != "" {
		if _, err := getSite(tx, batch.Site); err != nil {
			return nil, err
		}
		state = StateClaimed
	}
	var created []Device
	end := min(job.Done+n, job.Total)
	for i := job.Done; i < end; i++ {
		var jr importRow
		ok, err := getJSON(tx, bucketJobRows, jobRowKey(job.ID, i), &jr)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("import job %s: row %d is missing", job.ID, i+1)
		}
		r, res := jr.Row, RowResult{Serial: jr.Row.Serial}
		seen, err := tx.Get(bucketJobRows, jobSerialKey(job.ID, r.Serial))
		if err != nil {
			return nil, err
		}
		raw, err := tx.Get(bucketSerials, []byte(r.Serial))
		if err != nil {
			return nil, err
		}
		switch {
		case len(seen) == 8:
			res.Status, res.Reason = RowRejected, fmt.Sprintf("duplicate of row %d in this batch", binary.BigEndian.Uint64(seen)+1)
		case raw != nil:
			d, err := getDevice(tx, uuid.UUID(raw))
			if err != nil {
				return nil, err
			}
			res.DeviceID = d.ID
			if d.Model == r.Model && bytes.Equal(d.TokenHash, r.TokenHash) {
				res.Status = RowExists
			} else {
				res.Status, res.Reason = RowRejected, "serial already registered with a different model or claim token"
			}
		default:
			d := Device{ID: uuid.New(), Serial: r.Serial, Model: r.Model, BatchID: batch.ID, Site: batch.Site,
				State: state, TokenHash: r.TokenHash, ClaimCodeHash: r.CodeHash, BootstrapPSK: r.BootstrapPSK, CreatedAt: now.UTC(), UpdatedAt: now.UTC(), Rev: 1}
			if err := putDevice(tx, nil, &d); err != nil {
				return nil, err
			}
			res.Status, res.DeviceID = RowCreated, d.ID
			created = append(created, d)
		}
		if len(seen) != 8 {
			if err := tx.Put(bucketJobRows, jobSerialKey(job.ID, r.Serial), binary.BigEndian.AppendUint64(nil, uint64(i))); err != nil {
				return nil, err
			}
		}
		jr.Result = res
		if err := putJSON(tx, bucketJobRows, jobRowKey(job.ID, i), jr); err != nil {
			return nil, err
		}
	}
	job.Done = end
	job.Changed += len(created)
	if job.Done < job.Total {
		return created, nil
	}
	// The last chunk: the batch record and its event, when it created any.
	job.State = JobDone
	batch.Count = job.Changed
	if batch.Count == 0 {
		return created, nil
	}
	batch.CreatedAt = now.UTC()
	if err := putJSON(tx, bucketBatches, []byte(batch.ID), *batch); err != nil {
		return nil, err
	}
	e := job.Event.with("created", fmt.Sprint(batch.Count), "job", job.ID)
	e.Time = now
	return created, appendAudit(tx, e)
}

// FinishImport returns a finished import's batch and each row's outcome,
// and clears the rows it kept (in chunks).
func (s *Store) FinishImport(ctx context.Context, id string) (Batch, []RowResult, error) {
	job, err := s.Job(ctx, id)
	if err != nil {
		return Batch{}, nil, err
	}
	if job.Kind != JobImport || job.State != JobDone || job.Batch == nil {
		return Batch{}, nil, fmt.Errorf("%w: job %s is not a finished import", ErrInvalid, id)
	}
	results := make([]RowResult, 0, job.Total)
	err = s.db.View(ctx, func(tx kv.Tx) error {
		results = results[:0]
		return tx.Ascend(bucketJobRows, append([]byte(id), 0), nil, func(_, v []byte) (bool, error) {
			var jr importRow
			if err := json.Unmarshal(v, &jr); err != nil {
				return false, fmt.Errorf("decode import row: %w", err)
			}
			results = append(results, jr.Result)
			return true, nil
		})
	})
	if err != nil {
		return Batch{}, nil, err
	}
	return *job.Batch, results, s.DropJobRows(ctx, id)
}

// DropJobRows deletes what an import job kept beside it, in chunks.
func (s *Store) DropJobRows(ctx context.Context, id string) error {
	per := kv.PerTx(s.db, 1, 0, 1000)
	for {
		var keys [][]byte
		err := s.db.View(ctx, func(tx kv.Tx) error {
			keys = keys[:0]
			return tx.Ascend(bucketJobRows, []byte(id), nil, func(k, _ []byte) (bool, error) {
				if len(k) > len(id) && (k[len(id)] == 0 || k[len(id)] == 1) {
					keys = append(keys, bytes.Clone(k))
				}
				return len(keys) < per, nil
			})
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		err = s.db.Update(ctx, func(tx kv.Tx) error {
			for _, k := range keys {
				if err := tx.Delete(bucketJobRows, k); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
}

// AbandonImport marks an import whose staging never finished as abandoned
// and clears its rows: the caller never got an answer and imports again.
func (s *Store) AbandonImport(ctx context.Context, id string, now time.Time) error {
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		var job Job
		ok, err := getJSON(tx, bucketJobs, []byte(id), &job)
		if err != nil || !ok || job.State != JobStaging {
			return err
		}
		job.State, job.UpdatedAt = JobAbandoned, now.UTC()
		return putJSON(tx, bucketJobs, []byte(id), job)
	})
	if err != nil {
		return err
	}
	return s.DropJobRows(ctx, id)
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
		e := ev.with("devices", fmt.Sprint(len(ds)))
		e.Time = now
		return appendAudit(tx, e)
	})
}
