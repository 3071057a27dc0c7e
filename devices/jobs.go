package devices

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Bulk operations (revoke a site or a batch, a reconfiguration of many
// devices, a firmware retarget) run as jobs: the job record holds the
// selection and a cursor, and each chunk of devices is one transaction that
// changes those devices, writes their audit events and moves the cursor.
// A crash leaves the job at its last committed chunk; running it again goes
// on from there, so each device is changed exactly once. Devices are taken
// in ID order, the order of every index range.
//
//	jobs   job ID -> Job

var bucketJobs = []byte("jobs")

// JobKind is what a job does to each device it selects.
type JobKind string

// Job kinds.
const (
	JobRevoke   JobKind = "revoke"   // revoke each selected device not yet revoked
	JobOverride JobKind = "override" // set (or clear) each selected device's config override
	JobRetarget JobKind = "retarget" // a new config version for each enrolled device of a model (at a site)
	// JobSiteConfig gives each enrolled device of a site a new config
	// version (its site's profile changed); UpdateSite creates it.
	JobSiteConfig JobKind = "site-config"
	// JobImport registers the rows of a factory batch (StartImport).
	JobImport JobKind = "import"
)

// JobState is where a job is.
type JobState string

// Job states.
const (
	JobStaging   JobState = "staging" // an import's rows are being written; it does not run yet
	JobRunning   JobState = "running"
	JobDone      JobState = "done"
	JobAbandoned JobState = "abandoned" // an import whose staging a crash interrupted
)

// Job is a bulk operation and its progress.
type Job struct {
	ID    string   `json:"id"`
	Kind  JobKind  `json:"kind"`
	State JobState `json:"state"`
	// What it selects: Selector (revoke, override) or Model at Site (""
	// every site; retarget).
	Selector Selector        `json:"selector,omitzero"`
	Model    string          `json:"model,omitempty"`
	Site     string          `json:"site,omitempty"`
	Reason   string          `json:"reason,omitempty"`   // revoke
	Override *ConfigOverride `json:"override,omitempty"` // override; nil clears
	Batch    *Batch          `json:"batch,omitempty"`    // import: the batch its devices join
	// Event is the audit event of each device's change (revoke, override)
	// or of the whole job (retarget): who asked, from where.
	Event AuditEvent `json:"event"`
	// Progress: the devices the selection held when the job was created,
	// those handled (in ID order, up to Cursor), those changed.
	Total     int       `json:"total"`
	Done      int       `json:"done"`
	Changed   int       `json:"changed"`
	Cursor    uuid.UUID `json:"cursor"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// ErrJobDone is returned by RunJobChunk when the job has nothing left to do.
var ErrJobDone = errors.New("job is done")

// jobChunk is the number of devices one chunk transaction changes where the
// engine has no bound on a transaction.
var jobChunk = 500

// JobChunk is the number of devices per chunk on db: as many as fit the
// engine's bound on one transaction (a revocation writes about 12 keys per
// device), else 500.
func JobChunk(db kv.DB) int {
	return kv.PerTx(db, 12, 4, jobChunk)
}

// ChunkSize is JobChunk of the store's engine.
func (s *Store) ChunkSize() int { return JobChunk(s.db) }

// CreateJob checks what a job selects, counts it and stores the job,
// running, with a new ID.
func (s *Store) CreateJob(ctx context.Context, j Job, now time.Time) (Job, error) {
	var out Job
	err := s.db.Update(ctx, func(tx kv.Tx) (err error) {
		out, err = createJob(tx, j, now)
		return err
	})
	if err != nil {
		return Job{}, err
	}
	return out, nil
}

func createJob(tx kv.Tx, j Job, now time.Time) (Job, error) {
	switch j.Kind {
	case JobRevoke, JobOverride:
		if len(j.Selector.IDs) == 0 && j.Selector.Site == "" && j.Selector.Batch == "" {
			return Job{}, fmt.Errorf("%w: a job needs devices, a site or a batch", ErrInvalid)
		}
	case JobRetarget:
		if j.Model == "" {
			return Job{}, fmt.Errorf("%w: model: required", ErrInvalid)
		}
	case JobSiteConfig:
		if j.Site == "" {
			return Job{}, fmt.Errorf("%w: site: required", ErrInvalid)
		}
	default:
		return Job{}, fmt.Errorf("%w: job kind %q", ErrInvalid, j.Kind)
	}
	j.ID, j.State, j.CreatedAt, j.UpdatedAt = uuid.NewString(), JobRunning, now.UTC(), now.UTC()
	j.Done, j.Changed, j.Cursor = 0, 0, uuid.Nil
	j.Selector.IDs = slices.Clone(j.Selector.IDs)
	slices.SortFunc(j.Selector.IDs, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
	j.Selector.IDs = slices.Compact(j.Selector.IDs)
	if err := checkSelector(tx, j); err != nil {
		return Job{}, err
	}
	j.Total = 0
	for after := uuid.Nil; ; {
		ids, err := nextSelected(tx, j, after, 1000)
		if err != nil {
			return Job{}, err
		}
		j.Total += len(ids)
		if len(ids) < 1000 {
			break
		}
		after = ids[len(ids)-1]
	}
	return j, putJSON(tx, bucketJobs, []byte(j.ID), j)
}

func checkSelector(tx kv.Tx, j Job) error {
	sel := j.Selector
	if j.Kind == JobRetarget || j.Kind == JobSiteConfig {
		sel = Selector{Site: j.Site}
	}
	for _, id := range sel.IDs {
		raw, err := tx.Get(bucketDevices, id[:])
		if err != nil {
			return err
		}
		if raw == nil {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
	}
	if sel.Site != "" {
		if _, err := getSite(tx, sel.Site); err != nil {
			return err
		}
	}
	if sel.Batch != "" {
		raw, err := tx.Get(bucketBatches, []byte(sel.Batch))
		if err != nil {
			return err
		}
		if raw == nil {
			return fmt.Errorf("batch %q: %w", sel.Batch, ErrNotFound)
		}
	}
	return nil
}

// nextSelected returns up to n device IDs the job selects that sort after
// after, in ID order. A Selector is a union: each of its sources gives its
// first n IDs past the cursor, and the union's first n are among them.
func nextSelected(tx kv.Tx, j Job, after uuid.UUID, n int) ([]uuid.UUID, error) {
	from, ok := after, true
	if after != uuid.Nil {
		from, ok = nextID(after)
	}
	if !ok {
		return nil, nil
	}
	var out []uuid.UUID
	take := func(id uuid.UUID) (bool, error) {
		out = append(out, id)
		return len(out)%n != 0, nil
	}
	if j.Kind == JobRetarget || j.Kind == JobSiteConfig {
		err := joinRanges(tx, filterRanges(Filter{Model: j.Model, Site: j.Site}), from, take)
		return out, err
	}
	for _, id := range j.Selector.IDs {
		if slices.Compare(id[:], from[:]) >= 0 {
			out = append(out, id)
			if len(out) == n {
				break
			}
		}
	}
	var ranges []Filter
	if j.Selector.Site != "" {
		ranges = append(ranges, Filter{Site: j.Selector.Site})
	}
	if j.Selector.Batch != "" {
		ranges = append(ranges, Filter{Batch: j.Selector.Batch})
	}
	for _, f := range ranges {
		before := len(out)
		err := joinRanges(tx, filterRanges(f), from, func(id uuid.UUID) (bool, error) {
			out = append(out, id)
			return len(out)-before < n, nil
		})
		if err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
	out = slices.Compact(out)
	if len(out) > n {
		out = out[:n]
	}
	return out, nil
}

// RunJobChunk does the job's next chunk of at most n devices in one
// transaction and returns the job as it then is, with the devices the chunk
// changed (as they now are). A job with nothing left to do becomes done; a
// done job returns ErrJobDone. It is safe to run a job from two places: the
// chunk reads the cursor inside its transaction.
func (s *Store) RunJobChunk(ctx context.Context, id string, n int, now time.Time) (Job, []Device, error) {
	var job Job
	var changed []Device
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		changed = changed[:0]
		ok, err := getJSON(tx, bucketJobs, []byte(id), &job)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		case job.State != JobRunning:
			return ErrJobDone
		}
		if job.Kind == JobImport {
			if changed, err = importChunk(tx, &job, n, now); err != nil {
				return err
			}
			job.UpdatedAt = now.UTC()
			return putJSON(tx, bucketJobs, []byte(job.ID), job)
		}
		ids, err := nextSelected(tx, job, job.Cursor, n)
		if err != nil {
			return err
		}
		for _, id := range ids {
			d, err := getDevice(tx, id)
			if errors.Is(err, ErrNotFound) {
				continue // re-keyed or gone since the job started
			}
			if err != nil {
				return err
			}
			d, ok, err := applyJob(tx, job, d, now)
			if err != nil {
				return err
			}
			if ok {
				changed = append(changed, d)
			}
		}
		job.Done += len(ids)
		job.Changed += len(changed)
		job.UpdatedAt = now.UTC()
		if len(ids) > 0 {
			job.Cursor = ids[len(ids)-1]
		}
		if len(ids) < n {
			job.State = JobDone
			if job.Kind == JobRetarget {
				// One event for the whole change, as BumpConfig wrote.
				e := job.Event.with("devices", strconv.Itoa(job.Changed), "job", job.ID)
				e.Time = now
				if err := appendAudit(tx, e); err != nil {
					return err
				}
			}
		}
		return putJSON(tx, bucketJobs, []byte(job.ID), job)
	})
	return job, changed, err
}

// applyJob changes one device as the job says, with its audit event; false
// when the device is not one the job changes (already revoked, not
// enrolled).
func applyJob(tx kv.Tx, job Job, d Device, now time.Time) (Device, bool, error) {
	switch job.Kind {
	case JobRevoke:
		if d.State == StateRevoked {
			return d, false, nil
		}
		d, err := mutate(tx, d, now, func(d *Device) error {
			if err := releaseLease(tx, d); err != nil {
				return err
			}
			if d.CertSerial != "" {
				if err := putJSON(tx, bucketRevoked, []byte(d.CertSerial),
					RevokedCert{Serial: d.CertSerial, DeviceID: d.ID, RevokedAt: now, Reason: job.Reason}); err != nil {
					return err
				}
			}
			d.State = StateRevoked
			d.WiFiPSK = "" // its RADIUS server serves it to nobody again
			return nil
		})
		if err != nil {
			return d, false, err
		}
		e := job.Event
		e.Time, e.Action, e.Target = now, "device.revoke", d.Serial
		e.Detail = map[string]string{"reason": job.Reason, "cert_serial": d.CertSerial, "device_id": d.ID.String(), "job": job.ID}
		return d, true, appendAudit(tx, e)
	case JobOverride:
		if d.State == StateRevoked {
			return d, false, nil
		}
		d, err := mutate(tx, d, now, func(d *Device) error {
			d.Override = job.Override
			if d.State == StateProvisioned || d.State == StateActive {
				d.ConfigVersion++
			}
			return nil
		})
		if err != nil {
			return d, false, err
		}
		e := job.Event
		e.Time, e.Target = now, d.Serial
		e.Detail = map[string]string{"config_version": fmt.Sprint(d.ConfigVersion), "cleared": fmt.Sprint(job.Override == nil), "job": job.ID}
		return d, true, appendAudit(tx, e)
	case JobRetarget, JobSiteConfig:
		if d.State != StateProvisioned && d.State != StateActive {
			return d, false, nil
		}
		d, err := mutate(tx, d, now, func(d *Device) error { d.ConfigVersion++; return nil })
		return d, err == nil, err
	}
	return d, false, fmt.Errorf("%w: job kind %q", ErrInvalid, job.Kind)
}

// Job returns the job with the given ID.
func (s *Store) Job(ctx context.Context, id string) (Job, error) {
	var j Job
	err := s.db.View(ctx, func(tx kv.Tx) error {
		ok, err := getJSON(tx, bucketJobs, []byte(id), &j)
		if err == nil && !ok {
			err = fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		return err
	})
	return j, err
}

// Jobs lists the jobs, running ones first, then the newest.
func (s *Store) Jobs(ctx context.Context) ([]Job, error) {
	js, err := listJSON[Job](ctx, s, bucketJobs)
	slices.SortStableFunc(js, func(a, b Job) int {
		if (a.State == JobRunning) != (b.State == JobRunning) {
			if a.State == JobRunning {
				return -1
			}
			return 1
		}
		return b.CreatedAt.Compare(a.CreatedAt)
	})
	return js, err
}
