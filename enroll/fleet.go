package enroll

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	sealpkg "github.com/provisiond/provisiond/pki/seal"
)

// Registry is the part of the inventory that fleet operations change.
type Registry interface {
	CreateSite(ctx context.Context, site devices.Site, ev devices.AuditEvent) (devices.Site, error)
	UpdateSite(ctx context.Context, name string, fn func(*devices.Site) error, ev devices.AuditEvent) (devices.Site, devices.Job, error)
	DeleteSite(ctx context.Context, name string, ev devices.AuditEvent) error
	Device(ctx context.Context, id uuid.UUID) (devices.Device, error)
	Reopen(ctx context.Context, id uuid.UUID, tokenHash []byte, newID uuid.UUID, now time.Time, ev devices.AuditEvent) (devices.Device, error)
	DeviceBySerial(ctx context.Context, serial string) (devices.Device, error)
	Site(ctx context.Context, name string) (devices.Site, error)
	UpdateDevice(ctx context.Context, id uuid.UUID, fn func(d *devices.Device) (*devices.AuditEvent, error)) (devices.Device, error)
	// Bulk changes run as jobs (devices/jobs.go): chunks of ChunkSize
	// devices, one transaction each, resumable after a crash.
	CreateJob(ctx context.Context, j devices.Job, now time.Time) (devices.Job, error)
	RunJobChunk(ctx context.Context, id string, n int, now time.Time) (devices.Job, []devices.Device, error)
	Job(ctx context.Context, id string) (devices.Job, error)
	Jobs(ctx context.Context) ([]devices.Job, error)
	ChunkSize() int
	StartImport(ctx context.Context, b devices.Batch, rows []devices.ImportRow, ev devices.AuditEvent, now time.Time) (devices.Job, error)
	FinishImport(ctx context.Context, id string) (devices.Batch, []devices.RowResult, error)
	AbandonImport(ctx context.Context, id string, now time.Time) error
}

// SetOverride changes (or, with nil, clears) the config override of the
// selected devices (a list, a site, a batch: any number, in a job of
// chunks) and pushes the new config to the enrolled ones after each chunk.
// It returns the finished job (Changed: the devices changed) and how many
// got a new config version.
func (f *Fleet) SetOverride(ctx context.Context, a Actor, sel devices.Selector, o *devices.ConfigOverride) (devices.Job, int, error) {
	if o != nil {
		if err := o.Validate(); err != nil {
			return devices.Job{}, 0, err
		}
		sealed := *o
		var err error
		if sealed.Passphrase, err = seal(f.secrets, o.Passphrase); err != nil {
			return devices.Job{}, 0, err
		}
		o = &sealed
	}
	if err := f.checkSelection(ctx, a, sel); err != nil {
		return devices.Job{}, 0, err
	}
	job, err := f.reg.CreateJob(ctx, devices.Job{Kind: devices.JobOverride, Selector: sel, Override: o,
		Event: a.event("device.reconfigure", "", nil)}, time.Now())
	if err != nil {
		return devices.Job{}, 0, err
	}
	job, changed, err := f.runJob(ctx, job.ID)
	pushed := len(enrolledIDs(changed))
	f.log.Info("device config override set", "job", job.ID, "devices", job.Changed, "pushed", pushed, "cleared", o == nil, "actor", a.Name)
	return job, pushed, err
}

// Retarget gives the enrolled devices of a model (at a site, or every site
// when site is "") a new config version and pushes it: their firmware
// target may have changed. It returns how many devices it pushed to.
func (f *Fleet) Retarget(ctx context.Context, a Actor, model, site string) (int, error) {
	if site != "" && !a.CanSite(site) {
		return 0, fmt.Errorf("%w: site %s", ErrForbidden, site)
	}
	target := model + "@" + site
	if site == "" {
		target = model + "@*"
	}
	job, err := f.reg.CreateJob(ctx, devices.Job{Kind: devices.JobRetarget, Model: model, Site: site,
		Event: a.event("firmware.retarget", target, nil)}, time.Now())
	if err != nil {
		return 0, err
	}
	job, _, err = f.runJob(ctx, job.ID)
	f.log.Info("firmware target changed", "job", job.ID, "model", model, "site", site, "pushed", job.Changed, "actor", a.Name)
	return job.Changed, err
}

// runJob runs a job's chunks to its end and tells the listeners what each
// chunk changed (revoked devices; new configs to push) as soon as it has
// committed. It returns the job and every device it changed.
func (f *Fleet) runJob(ctx context.Context, id string) (devices.Job, []devices.Device, error) {
	var all []devices.Device
	for {
		n := f.cfg.JobChunk
		if n <= 0 {
			n = f.reg.ChunkSize()
		}
		job, changed, err := f.reg.RunJobChunk(ctx, id, n, time.Now())
		if errors.Is(err, devices.ErrJobDone) {
			job, err = f.reg.Job(ctx, id)
			return job, all, err
		}
		if err != nil {
			return job, all, fmt.Errorf("job %s: %w", id, err)
		}
		all = append(all, changed...)
		if len(changed) > 0 {
			switch {
			case f.events == nil:
			case job.Kind == devices.JobRevoke:
				f.events.Revoked(ctx, changed)
			default:
				if ids := enrolledIDs(changed); len(ids) > 0 {
					f.events.Reconfigured(ctx, ids)
				}
			}
		}
		if job.State == devices.JobDone {
			if f.events != nil {
				f.events.JobDone(ctx, job)
			}
			return job, all, nil
		}
	}
}

// ResumeJobs finishes the jobs a stop or a crash interrupted, oldest first.
// With staleAfter > 0 (a cluster, whose other replicas run jobs too) it
// takes only jobs that made no progress for that long: their replica died.
func (f *Fleet) ResumeJobs(ctx context.Context, staleAfter time.Duration) error {
	jobs, err := f.reg.Jobs(ctx)
	if err != nil {
		return err
	}
	slices.Reverse(jobs) // running ones came first, newest first
	for _, j := range jobs {
		if staleAfter > 0 && time.Since(j.UpdatedAt) < staleAfter {
			continue // perhaps another replica's, still at work
		}
		if j.State == devices.JobStaging {
			// An import whose rows were still being written: its caller
			// got an error and imports again.
			f.log.Warn("abandoning an import interrupted while staging", "job", j.ID, "rows", j.Total)
			if err := f.reg.AbandonImport(ctx, j.ID, time.Now()); err != nil {
				return err
			}
			continue
		}
		if j.State != devices.JobRunning {
			continue
		}
		f.log.Info("resuming job", "job", j.ID, "kind", j.Kind, "done", j.Done, "total", j.Total)
		if j.Kind == devices.JobRevoke {
			f.revokeMu.Lock()
		}
		_, _, err := f.runJob(ctx, j.ID)
		if j.Kind == devices.JobRevoke {
			f.revokeMu.Unlock()
		}
		if err == nil && j.Kind == devices.JobImport {
			var b devices.Batch
			b, _, err = f.reg.FinishImport(ctx, j.ID)
			f.log.Info("resumed import finished", "job", j.ID, "batch", b.ID, "created", b.Count)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Job returns a bulk operation's progress.
func (f *Fleet) Job(ctx context.Context, id string) (devices.Job, error) { return f.reg.Job(ctx, id) }

// Jobs lists the bulk operations, running ones first.
func (f *Fleet) Jobs(ctx context.Context) ([]devices.Job, error) { return f.reg.Jobs(ctx) }

// enrolledIDs are the IDs of the provisioned or active devices among ds:
// those whose config a change gave a new version.
func enrolledIDs(ds []devices.Device) []uuid.UUID {
	var ids []uuid.UUID
	for _, d := range ds {
		if d.State == devices.StateProvisioned || d.State == devices.StateActive {
			ids = append(ids, d.ID)
		}
	}
	return ids
}

// Fleet runs the operator's changes to sites, factory batches and device
// revocation, each validated and audited.
type Fleet struct {
	cfg     FleetConfig
	reg     Registry
	log     *slog.Logger
	secrets Secrets
	events  FleetEvents

	claimsBySerial *throttle
	claimsByActor  *throttle
	revokeMu       sync.Mutex
}

// FleetEvents hears what fleet operations changed, as soon as each chunk
// of a job has committed, so that the front ends act on it.
type FleetEvents interface {
	// Revoked: cut the devices' live sessions (after each chunk).
	Revoked(ctx context.Context, devs []devices.Device)
	// Reconfigured: these enrolled devices have a new config version; push it.
	Reconfigured(ctx context.Context, ids []uuid.UUID)
	// JobDone: a job has run to its end (a revocation's CRL is due now).
	JobDone(ctx context.Context, job devices.Job)
}

// checkSelection refuses an empty selection, and anything outside the sites
// of an actor limited to sites (which may never select a batch).
func (f *Fleet) checkSelection(ctx context.Context, a Actor, sel devices.Selector) error {
	switch {
	case len(sel.IDs) == 0 && sel.Site == "" && sel.Batch == "":
		return fmt.Errorf("%w: name devices, a site or a batch", ErrInvalid)
	case len(a.Sites) > 0 && sel.Batch != "":
		return fmt.Errorf("%w: a token limited to sites cannot select a batch", ErrForbidden)
	case sel.Site != "" && !a.CanSite(sel.Site):
		return fmt.Errorf("%w: site %s", ErrForbidden, sel.Site)
	}
	if len(a.Sites) > 0 {
		for _, id := range sel.IDs {
			d, err := f.reg.Device(ctx, id)
			if err != nil {
				return err
			}
			if !a.CanSite(d.Site) {
				return fmt.Errorf("%w: device %s is not in this token's sites", ErrForbidden, d.Serial)
			}
		}
	}
	return nil
}

// MaxReasonBytes bounds a revocation reason.
const MaxReasonBytes = 200

// Revoke revokes the selected devices with a reason, in a job of chunks:
// certificate on the revocation list, lease released, state revoked, one
// audit event each; after each chunk FleetEvents.Revoked runs. An actor
// limited to sites may only revoke devices of its sites (and no batches).
// It returns the finished job and the devices it revoked.
func (f *Fleet) Revoke(ctx context.Context, a Actor, sel devices.Selector, reason string) (devices.Job, []devices.Device, error) {
	if reason == "" || len(reason) > MaxReasonBytes {
		return devices.Job{}, nil, fmt.Errorf("%w: reason: 1-%d bytes", ErrInvalid, MaxReasonBytes)
	}
	if err := f.checkSelection(ctx, a, sel); err != nil {
		return devices.Job{}, nil, err
	}
	// One revocation at a time, so listeners see revocations in order.
	f.revokeMu.Lock()
	defer f.revokeMu.Unlock()
	job, err := f.reg.CreateJob(ctx, devices.Job{Kind: devices.JobRevoke, Selector: sel, Reason: reason,
		Event: a.event("device.revoke", "", nil)}, time.Now())
	if err != nil {
		return devices.Job{}, nil, err
	}
	job, revoked, err := f.runJob(ctx, job.ID)
	f.log.Info("devices revoked", "job", job.ID, "count", len(revoked), "reason", reason, "actor", a.Name)
	return job, revoked, err
}

// Reopen lets a revoked device enroll again: it gets a fresh claim token
// (returned, never stored) and forgets its revoked certificate. Under its
// site's new-identity policy it also gets a new UUID.
func (f *Fleet) Reopen(ctx context.Context, a Actor, id uuid.UUID) (string, devices.Device, error) {
	d, err := f.reg.Device(ctx, id)
	if err != nil {
		return "", d, err
	}
	if !a.CanSite(d.Site) {
		return "", d, fmt.Errorf("%w: device %s is not in this token's sites", ErrForbidden, d.Serial)
	}
	newID := uuid.Nil
	if d.Site != "" {
		site, err := f.reg.Site(ctx, d.Site)
		if err != nil {
			return "", d, err
		}
		if site.Reenroll == devices.NewIdentity {
			newID = uuid.New()
		}
	}
	tok := NewClaimToken()
	d, err = f.reg.Reopen(ctx, id, HashToken(tok), newID, time.Now().UTC(), a.event("device.reopen", d.Serial, nil))
	if err != nil {
		return "", d, err
	}
	f.log.Info("device re-opened", "serial", d.Serial, "actor", a.Name)
	return tok, d, nil
}

// FleetConfig tunes fleet operations. Zero values take the defaults.
type FleetConfig struct {
	// JobChunk is the number of devices a bulk job changes per transaction;
	// 0 lets the store choose (as many as its engine takes in one
	// transaction: 500 on bbolt, about 10 on an engine bounded at 128
	// writes).
	JobChunk int
	// Throttles keeps the claim throttles where every replica sees them;
	// nil: in this process. Not a setting.
	Throttles ThrottleStore `json:"-"`
}

// NewFleet returns a Fleet over reg.
// events may be nil (nobody hears of the changes).
func NewFleet(cfg FleetConfig, reg Registry, secrets Secrets, events FleetEvents, log *slog.Logger) *Fleet {
	return &Fleet{cfg: cfg, reg: reg, secrets: secrets, events: events, log: log,
		claimsBySerial: newThrottle("claim-serial", 5, 10*time.Minute, 30*time.Second, time.Hour, cfg.Throttles, log),
		claimsByActor:  newThrottle("claim-actor", 20, 10*time.Minute, 30*time.Second, time.Hour, cfg.Throttles, log)}
}

// ErrClaimRejected is returned when a claim code does not match a device that
// can be claimed (unknown serial, wrong secret, already claimed): one answer
// for all, so that codes cannot be probed.
var ErrClaimRejected = errors.New("claim code does not match a claimable device")

// Claim binds the device a label's claim code names to a site: an
// installer's scan. The code is single-use, attempts are throttled per serial
// and per actor, and a successful claim is audited (who, when, from where).
func (f *Fleet) Claim(ctx context.Context, a Actor, code, site string) (devices.Device, error) {
	c, err := ParseClaimCode(code)
	if err != nil {
		return devices.Device{}, err
	}
	if !devices.ValidName(site) {
		return devices.Device{}, fmt.Errorf("%w: site: invalid name", ErrInvalid)
	}
	if !a.CanSite(site) {
		return devices.Device{}, fmt.Errorf("%w: site %s", ErrForbidden, site)
	}
	now := time.Now()
	serialSeen := false
	for _, t := range []struct {
		th  *throttle
		key string
	}{{f.claimsBySerial, c.Serial}, {f.claimsByActor, a.Name}} {
		ok, wait, seen, err := t.th.allow(ctx, t.key, now)
		if err != nil {
			return devices.Device{}, err
		}
		if !ok {
			return devices.Device{}, &RetryError{Err: ErrThrottled, After: wait}
		}
		serialSeen = serialSeen || (seen && t.th == f.claimsBySerial)
	}
	if _, err := f.reg.Site(ctx, site); err != nil {
		return devices.Device{}, err
	}
	fail := func() (devices.Device, error) {
		f.claimsBySerial.fail(ctx, c.Serial, now)
		f.claimsByActor.fail(ctx, a.Name, now)
		f.log.Info("claim refused", "serial", c.Serial, "actor", a.Name, "source", a.Source)
		return devices.Device{}, ErrClaimRejected
	}
	d, err := f.reg.DeviceBySerial(ctx, c.Serial)
	want := decoyHash[:]
	if err == nil && len(d.ClaimCodeHash) == len(want) {
		want = d.ClaimCodeHash
	}
	if subtle.ConstantTimeCompare(c.Hash(), want) != 1 || err != nil {
		return fail()
	}
	d, err = f.reg.UpdateDevice(ctx, d.ID, func(x *devices.Device) (*devices.AuditEvent, error) {
		if x.State != devices.StateManufactured || subtle.ConstantTimeCompare(x.ClaimCodeHash, c.Hash()) != 1 {
			return nil, ErrClaimRejected // claimed meanwhile: single use
		}
		x.State, x.Site, x.ClaimCodeHash, x.UpdatedAt = devices.StateClaimed, site, nil, now.UTC()
		ev := a.event("device.claim", x.Serial, map[string]string{"site": site, "device_id": x.ID.String()})
		ev.Time = now.UTC()
		return &ev, nil
	})
	if errors.Is(err, ErrClaimRejected) {
		return fail()
	}
	if err != nil {
		return devices.Device{}, err
	}
	f.claimsBySerial.succeed(ctx, c.Serial, serialSeen)
	f.log.Info("device claimed", "serial", d.Serial, "site", site, "actor", a.Name, "source", a.Source)
	return d, nil
}

// Actor is who asks for a change and from where (audit), and what it may touch.
type Actor struct {
	Name   string // "token:<id>"
	Source string
	Sites  []string // empty: every site
}

// CanSite reports whether the actor may act on a site ("" is no site: only
// actors limited to no sites may).
func (a Actor) CanSite(site string) bool {
	if len(a.Sites) == 0 {
		return true
	}
	for _, s := range a.Sites {
		if s == site && site != "" {
			return true
		}
	}
	return false
}

func (a Actor) event(action, target string, detail map[string]string) devices.AuditEvent {
	return devices.AuditEvent{Actor: a.Name, Action: action, Target: target, Source: a.Source, Detail: detail}
}

// CreateSite validates and stores a new site.
func (f *Fleet) CreateSite(ctx context.Context, a Actor, s devices.Site) (devices.Site, error) {
	if err := s.Validate(); err != nil { // the passphrase is checked in clear
		return devices.Site{}, err
	}
	var err error
	if s.Passphrase, err = seal(f.secrets, s.Passphrase); err != nil {
		return devices.Site{}, err
	}
	if err := sealNAS(f.secrets, &s); err != nil {
		return devices.Site{}, err
	}
	out, err := f.reg.CreateSite(ctx, s, a.event("site.create", s.Name, map[string]string{"cidr": s.CIDR.String(), "ssid": s.SSID}))
	if err == nil {
		f.log.Info("site created", "site", s.Name, "actor", a.Name)
	}
	return out, err
}

// UpdateSite changes a site; fn edits a copy of the stored profile. Every
// enrolled device of the site gets a new config version, pushed to it at once
// (FleetEvents.Reconfigured) or when it next connects.
func (f *Fleet) UpdateSite(ctx context.Context, a Actor, name string, fn func(*devices.Site) error) (devices.Site, error) {
	// fn sees the stored (sealed) passphrase; a new one it sets is checked
	// in clear and sealed.
	sealing := func(s *devices.Site) error {
		before := s.Passphrase
		if err := fn(s); err != nil {
			return err
		}
		if err := sealNAS(f.secrets, s); err != nil {
			return err
		}
		if s.Passphrase == before {
			return nil
		}
		if err := s.Validate(); err != nil {
			return err
		}
		var err error
		s.Passphrase, err = seal(f.secrets, s.Passphrase)
		return err
	}
	out, job, err := f.reg.UpdateSite(ctx, name, sealing, a.event("site.update", name, nil))
	if err != nil {
		return out, err
	}
	// The site's enrolled devices get a new config version, pushed after
	// each chunk; the job was created with the change, so a crash here
	// leaves it to resume at the next start.
	job, _, err = f.runJob(ctx, job.ID)
	f.log.Info("site updated", "site", name, "version", out.Version, "job", job.ID, "devices", job.Changed, "actor", a.Name)
	return out, err
}

// DeleteSite removes a site that no device uses.
func (f *Fleet) DeleteSite(ctx context.Context, a Actor, name string) error {
	err := f.reg.DeleteSite(ctx, name, a.event("site.delete", name, nil))
	if err == nil {
		f.log.Info("site deleted", "site", name, "actor", a.Name)
	}
	return err
}

// ManifestRow is one line of a factory manifest: a serial, a model, and the
// claim token or its hash (exactly one of the two).
type ManifestRow struct {
	Serial         string `json:"serial"`
	Model          string `json:"model,omitempty"`
	ClaimToken     string `json:"claim_token,omitempty"`
	ClaimTokenHash string `json:"claim_token_hash,omitempty"`
	// ClaimCodeHash is the hash of the label's claim code (ClaimCode.Hash,
	// as sha256:<hex>), when devices of the batch are claimed by installers.
	ClaimCodeHash string `json:"claim_code_hash,omitempty"`
	// LwM2MPSK is the device's LwM2M bootstrap PSK in hex, as its flash
	// holds it; the inventory keeps it sealed.
	LwM2MPSK string `json:"lwm2m_psk,omitempty"`
}

// BatchSpec describes a batch as a whole.
type BatchSpec struct {
	Model  string // default for rows without one
	Site   string // pre-assign every device to this site (state claimed)
	Source string // "mint" or a manifest file name
}

// MaxBatchRows bounds one import request.
const MaxBatchRows = 100_000

// ImportBatch validates every row, registers the good ones in one
// transaction and reports each row's outcome in order: created, exists
// (re-import, idempotent) or rejected with the reason.
func (f *Fleet) ImportBatch(ctx context.Context, a Actor, spec BatchSpec, rows []ManifestRow) (devices.Batch, []devices.RowResult, error) {
	switch {
	case len(rows) == 0:
		return devices.Batch{}, nil, fmt.Errorf("%w: rows: empty batch", ErrInvalid)
	case len(rows) > MaxBatchRows:
		return devices.Batch{}, nil, fmt.Errorf("%w: rows: more than %d in one batch", ErrInvalid, MaxBatchRows)
	case spec.Model != "" && !devices.ValidName(spec.Model):
		return devices.Batch{}, nil, fmt.Errorf("%w: model: must be 1-64 of [A-Za-z0-9._-]", ErrInvalid)
	case spec.Site != "" && !devices.ValidName(spec.Site):
		return devices.Batch{}, nil, fmt.Errorf("%w: site: invalid name", ErrInvalid)
	}
	results := make([]devices.RowResult, len(rows))
	var good []devices.ImportRow
	var goodIdx []int
	for i, r := range rows {
		row, err := checkRow(r, spec.Model)
		if err == nil && r.LwM2MPSK != "" {
			var psk []byte
			if psk, err = ParseBootstrapPSK(r.LwM2MPSK); err == nil {
				row.BootstrapPSK, err = seal(f.secrets, hex.EncodeToString(psk))
			}
		}
		if err != nil {
			results[i] = devices.RowResult{Serial: r.Serial, Status: devices.RowRejected, Reason: err.Error()}
			continue
		}
		good = append(good, row)
		goodIdx = append(goodIdx, i)
	}
	batch := devices.Batch{ID: uuid.NewString(), Model: spec.Model, Site: spec.Site, Source: spec.Source, CreatedBy: a.Name}
	if len(good) > 0 {
		// A job like every bulk change: the same runner, chunk size and
		// resumption after a crash.
		job, err := f.reg.StartImport(ctx, batch, good, a.event("batch.import", batch.ID,
			map[string]string{"source": spec.Source, "model": spec.Model, "site": spec.Site}), time.Now())
		if err != nil {
			return devices.Batch{}, nil, err
		}
		if _, _, err := f.runJob(ctx, job.ID); err != nil {
			return devices.Batch{}, nil, err
		}
		b, res, err := f.reg.FinishImport(ctx, job.ID)
		if err != nil {
			return devices.Batch{}, nil, err
		}
		batch = b
		for j, r := range res {
			results[goodIdx[j]] = r
		}
	}
	f.log.Info("batch imported", "batch", batch.ID, "created", batch.Count, "rows", len(rows), "actor", a.Name)
	return batch, results, nil
}

func checkRow(r ManifestRow, defModel string) (devices.ImportRow, error) {
	model := r.Model
	if model == "" {
		model = defModel
	}
	switch {
	case !devices.ValidSerial(r.Serial):
		return devices.ImportRow{}, errors.New("serial: must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
	case !devices.ValidName(model):
		return devices.ImportRow{}, errors.New("model: missing or invalid")
	case (r.ClaimToken == "") == (r.ClaimTokenHash == ""):
		return devices.ImportRow{}, errors.New("give exactly one of claim_token and claim_token_hash")
	}
	var hash []byte
	if r.ClaimToken != "" {
		if err := CheckToken(r.ClaimToken); err != nil {
			return devices.ImportRow{}, errors.New(strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
		}
		hash = HashToken(r.ClaimToken)
	} else {
		h, err := ParseTokenHash(r.ClaimTokenHash)
		if err != nil {
			return devices.ImportRow{}, errors.New(strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
		}
		hash = h
	}
	row := devices.ImportRow{Serial: r.Serial, Model: model, TokenHash: hash}
	if r.ClaimCodeHash != "" {
		h, err := ParseTokenHash(r.ClaimCodeHash)
		if err != nil {
			return devices.ImportRow{}, errors.New("claim_code_hash: want sha256:<64 hex digits>")
		}
		row.CodeHash = h
	}
	return row, nil
}

// ParseManifest reads a factory manifest: JSON lines (one ManifestRow object
// per line) or CSV with a header naming the same fields as columns: serial,
// model, claim_token or claim_token_hash, claim_code_hash and lwm2m_psk. Blank lines are skipped. It fails on a
// structural error (bad JSON, wrong column count, unknown columns), naming
// the line; row content is checked by ImportBatch.
func ParseManifest(r io.Reader) ([]ManifestRow, error) {
	br := bufio.NewReader(r)
	first, err := peekNonSpace(br)
	if err != nil {
		return nil, err
	}
	if first == '{' {
		return parseJSONLines(br)
	}
	return parseCSV(br)
}

func peekNonSpace(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.ReadByte()
		if err == io.EOF {
			return 0, fmt.Errorf("%w: manifest is empty", ErrInvalid)
		}
		if err != nil {
			return 0, fmt.Errorf("read manifest: %w", err)
		}
		if b != ' ' && b != '\t' && b != '\r' && b != '\n' && b != 0xEF && b != 0xBB && b != 0xBF { // BOM too
			return b, br.UnreadByte()
		}
	}
}

func parseJSONLines(r io.Reader) ([]ManifestRow, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	var rows []ManifestRow
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(text))
		dec.DisallowUnknownFields()
		var row ManifestRow
		if err := dec.Decode(&row); err != nil {
			return nil, fmt.Errorf("%w: manifest line %d: %w", ErrInvalid, line, err)
		}
		if len(rows) == MaxBatchRows {
			return nil, fmt.Errorf("%w: manifest has more than %d rows", ErrInvalid, MaxBatchRows)
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrInvalid, err)
	}
	return rows, nil
}

func parseCSV(r io.Reader) ([]ManifestRow, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("%w: manifest header: %w", ErrInvalid, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(h))
		switch h {
		case "serial", "model", "claim_token", "claim_token_hash", "claim_code_hash", "lwm2m_psk":
		default:
			return nil, fmt.Errorf("%w: manifest header: unknown column %q (want serial, model, claim_token, claim_token_hash, claim_code_hash or lwm2m_psk)", ErrInvalid, h)
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("%w: manifest header: column %q twice", ErrInvalid, h)
		}
		col[h] = i
	}
	if _, ok := col["serial"]; !ok {
		return nil, fmt.Errorf("%w: manifest header: no serial column", ErrInvalid)
	}
	get := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	var rows []ManifestRow
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: manifest: %w", ErrInvalid, err)
		}
		if len(rows) == MaxBatchRows {
			return nil, fmt.Errorf("%w: manifest has more than %d rows", ErrInvalid, MaxBatchRows)
		}
		rows = append(rows, ManifestRow{Serial: get(rec, "serial"), Model: get(rec, "model"),
			ClaimToken: get(rec, "claim_token"), ClaimTokenHash: get(rec, "claim_token_hash"), ClaimCodeHash: get(rec, "claim_code_hash"),
			LwM2MPSK: get(rec, "lwm2m_psk")})
	}
	return rows, nil
}

// Rebootstrap lets a provisioned device's next LwM2M bootstrap through: it
// then gets fresh credentials and its certificate, if it had one, is
// superseded. The device asks when its management server tells it to
// (Bootstrap-Request Trigger, /1/x/9) or when it loses its server account.
func (f *Fleet) Rebootstrap(ctx context.Context, a Actor, id uuid.UUID) (devices.Device, error) {
	d, err := f.reg.Device(ctx, id)
	if err != nil {
		return d, err
	}
	if !a.CanSite(d.Site) {
		return d, fmt.Errorf("%w: device %s is not in this token's sites", ErrForbidden, d.Serial)
	}
	now := time.Now().UTC()
	return f.reg.UpdateDevice(ctx, id, func(x *devices.Device) (*devices.AuditEvent, error) {
		switch x.State {
		case devices.StateRevoked:
			return nil, fmt.Errorf("%w: device %s is revoked; re-open it instead", ErrInvalid, x.Serial)
		case devices.StateProvisioned, devices.StateActive:
		default:
			return nil, fmt.Errorf("%w: device %s is %s: its next bootstrap goes through anyway", ErrInvalid, x.Serial, x.State)
		}
		x.Rebootstrap, x.UpdatedAt = true, now
		ev := a.event("device.rebootstrap", x.Serial, nil)
		ev.Time = now
		return &ev, nil
	})
}

// LwM2MCredentials are what a device's LwM2M management server needs to
// know of it after a bootstrap in psk mode.
type LwM2MCredentials struct {
	Endpoint    string `json:"endpoint"`
	PSKIdentity string `json:"psk_identity"`
	PSK         string `json:"psk"` // hex
}

// LwM2MCredentials opens the management-server PSK a device's bootstrap
// gave it, for the management server; endpoint maps a serial to its
// endpoint name, which is also the PSK identity.
func (f *Fleet) LwM2MCredentials(ctx context.Context, a Actor, id uuid.UUID, endpoint func(serial string) string) (LwM2MCredentials, error) {
	d, err := f.reg.Device(ctx, id)
	if err != nil {
		return LwM2MCredentials{}, err
	}
	if !a.CanSite(d.Site) {
		return LwM2MCredentials{}, fmt.Errorf("%w: device %s is not in this token's sites", ErrForbidden, d.Serial)
	}
	if d.LwM2MPSK == "" || d.State == devices.StateRevoked {
		return LwM2MCredentials{}, fmt.Errorf("%w: device %s holds no LwM2M PSK", devices.ErrNotFound, d.Serial)
	}
	psk, err := openPSK(f.secrets, d.LwM2MPSK)
	if err != nil {
		return LwM2MCredentials{}, err
	}
	ep := endpoint(d.Serial)
	return LwM2MCredentials{Endpoint: ep, PSKIdentity: ep, PSK: hex.EncodeToString(psk)}, nil
}

// sealNAS seals the NAS secrets of a site that are not sealed yet (new ones).
func sealNAS(sec Secrets, s *devices.Site) error {
	for i, n := range s.NAS {
		if sec == nil || strings.HasPrefix(n.Secret, sealpkg.Prefix) {
			continue
		}
		if len(n.Secret) == 0 || len(n.Secret) > 128 {
			return fmt.Errorf("%w: nas[%d].secret: 1-128 characters", ErrInvalid, i)
		}
		v, err := sec.Seal(n.Secret)
		if err != nil {
			return err
		}
		s.NAS[i].Secret = v
	}
	return nil
}

// NASSecrets opens a site's NAS secrets (for Disconnect-Requests).
func (f *Fleet) NASSecrets(site devices.Site) ([]devices.NAS, error) {
	out := make([]devices.NAS, len(site.NAS))
	for i, n := range site.NAS {
		v, err := open(f.secrets, n.Secret)
		if err != nil {
			return nil, fmt.Errorf("site %s nas %s: %w", site.Name, n.Address, err)
		}
		out[i] = devices.NAS{Address: n.Address, Secret: v}
	}
	return out, nil
}
