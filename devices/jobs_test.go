package devices_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
)

// runJob creates a job and runs it to the end in chunks of n.
func runJob(t testing.TB, s *devices.Store, j devices.Job, n int) devices.Job {
	t.Helper()
	j, err := s.CreateJob(context.Background(), j, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for {
		j, _, err = s.RunJobChunk(context.Background(), j.ID, n, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if j.State == devices.JobDone {
			return j
		}
	}
}

// TestJobResumesAfterACrash revokes the union of a site, a batch and a list
// of devices in chunks, stops part-way as a crash would, opens the store
// again and finishes: every selected device is revoked, with exactly one
// audit event, and nothing else is.
func TestJobResumesAfterACrash(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b"} {
		if _, err := s.CreateSite(ctx, site(name, "10.1.0.0/24"), devices.AuditEvent{}); err != nil {
			t.Fatal(err)
		}
	}
	importN := func(batch, siteName string, n int) []devices.Device {
		var rows []devices.ImportRow
		for i := range n {
			serial := fmt.Sprintf("%s-%03d", batch, i)
			rows = append(rows, devices.ImportRow{Serial: serial, Model: "M", TokenHash: hash(serial)})
		}
		_, res, err := s.ImportBatch(ctx, devices.Batch{ID: batch, Site: siteName}, rows, devices.AuditEvent{})
		if err != nil {
			t.Fatal(err)
		}
		var out []devices.Device
		for _, r := range res {
			d, _ := s.Device(ctx, r.DeviceID)
			out = append(out, d)
		}
		return out
	}
	inA := importN("batch-1", "a", 40)    // site a, batch-1
	inB := importN("batch-2", "b", 30)    // site b, batch-2
	others := importN("batch-3", "b", 10) // untouched, but for two picked by ID
	sel := devices.Selector{Site: "a", Batch: "batch-2", IDs: []uuid.UUID{others[3].ID, others[7].ID, inA[0].ID}}
	want := map[string]bool{others[3].Serial: true, others[7].Serial: true}
	for _, d := range append(inA, inB...) {
		want[d.Serial] = true
	}
	// A device revoked before the job is skipped, not revoked twice.
	pre, err := s.CreateJob(ctx, devices.Job{Kind: devices.JobRevoke, Selector: devices.Selector{IDs: []uuid.UUID{inB[5].ID}}, Reason: "earlier"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RunJobChunk(ctx, pre.ID, 10, time.Now()); err != nil {
		t.Fatal(err)
	}

	job, err := s.CreateJob(ctx, devices.Job{Kind: devices.JobRevoke, Selector: sel, Reason: "stolen",
		Event: devices.AuditEvent{Actor: "token:test"}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if job.Total != len(want) {
		t.Fatalf("job selects %d devices, want %d", job.Total, len(want))
	}
	for range 3 {
		if job, _, err = s.RunJobChunk(ctx, job.ID, 9, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if job.State != devices.JobRunning || job.Done != 27 {
		t.Fatalf("after three chunks of 9: %+v", job)
	}
	s.Close() // the crash: the fourth chunk never ran

	s, err = openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	running, err := s.Jobs(ctx)
	if err != nil || len(running) == 0 || running[0].ID != job.ID || running[0].State != devices.JobRunning {
		t.Fatalf("jobs after the restart: %+v, %v", running, err)
	}
	revokedBy := 0
	for {
		var changed []devices.Device
		job, changed, err = s.RunJobChunk(ctx, job.ID, 9, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		revokedBy += len(changed)
		if job.State == devices.JobDone {
			break
		}
	}
	if _, _, err := s.RunJobChunk(ctx, job.ID, 9, time.Now()); !errors.Is(err, devices.ErrJobDone) {
		t.Fatalf("running a done job: %v, want ErrJobDone", err)
	}
	if job.Done != job.Total || job.Changed != job.Total-1 {
		t.Fatalf("finished job: %+v (one device was revoked before it)", job)
	}
	for _, d := range append(append(inA, inB...), others...) {
		evs, err := s.History(ctx, d.Serial, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range evs {
			if ev.Action == "device.revoke" {
				n++
			}
		}
		now, _ := s.Device(ctx, d.ID)
		switch {
		case want[d.Serial] && (now.State != devices.StateRevoked || n != 1):
			t.Errorf("%s: %s with %d revocation events, want revoked once", d.Serial, now.State, n)
		case !want[d.Serial] && (now.State == devices.StateRevoked || n != 0):
			t.Errorf("%s: revoked but not selected", d.Serial)
		}
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %v", err, problems)
	}
	if _, err := s.VerifyAudit(ctx); err != nil {
		t.Fatal(err)
	}
}

// boundedDB is an engine that refuses a transaction of more than max
// writes, as etcd refuses more than 128 operations.
type boundedDB struct {
	kv.DB
	max int
}

func (b *boundedDB) MaxTxOps() int { return b.max }

func (b *boundedDB) Update(ctx context.Context, fn func(kv.Tx) error) error {
	return b.DB.Update(ctx, func(tx kv.Tx) error {
		c := &countingTx{Tx: tx}
		if err := fn(c); err != nil {
			return err
		}
		if c.writes > b.max {
			return fmt.Errorf("transaction of %d writes: the engine takes %d", c.writes, b.max)
		}
		return nil
	})
}

type countingTx struct {
	kv.Tx
	writes int
}

func (c *countingTx) Put(b, k, v []byte) error { c.writes++; return c.Tx.Put(b, k, v) }
func (c *countingTx) Delete(b, k []byte) error { c.writes++; return c.Tx.Delete(b, k) }

// TestJobChunksFitABoundedEngine: on an engine that takes 128 writes per
// transaction, a job's chunks (of the size the store picks for it) commit,
// for enrolled devices with leases and certificates, the most expensive to
// revoke.
func TestJobChunksFitABoundedEngine(t *testing.T) {
	ctx := context.Background()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: devices.Buckets})
	if err != nil {
		t.Fatal(err)
	}
	s, err := devices.New(ctx, &boundedDB{DB: db, max: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateSite(ctx, site("a", "10.1.0.0/24"), devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		d := importOne(t, s, fmt.Sprintf("SN-%02d", i), "a")
		if _, err := s.Provision(ctx, devices.Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: time.Now(),
			Apply: func(x *devices.Device) {
				x.State, x.CertSerial = devices.StateProvisioned, fmt.Sprintf("c0ffee%02d", i)
			}}); err != nil {
			t.Fatal(err)
		}
	}
	n := s.ChunkSize()
	if n < 1 || n > 20 {
		t.Fatalf("chunk of %d devices for a 128-write engine", n)
	}
	var rows []devices.ImportRow
	for i := range 100 {
		serial := fmt.Sprintf("IMP-%03d", i)
		rows = append(rows, devices.ImportRow{Serial: serial, Model: "M", TokenHash: hash(serial)})
	}
	b, res, err := s.ImportBatch(ctx, devices.Batch{ID: "big", Site: "a"}, rows, devices.AuditEvent{Action: "batch.import"})
	if err != nil || b.Count != 100 || len(res) != 100 {
		t.Fatalf("an import of 100 rows on a bounded engine: %d created, %v", b.Count, err)
	}
	// Override and revoke change every device of the site (140), retarget
	// and site config the 40 enrolled ones.
	for _, c := range []struct {
		j    devices.Job
		want int
	}{
		{devices.Job{Kind: devices.JobOverride, Selector: devices.Selector{Site: "a"}, Override: &devices.ConfigOverride{SSID: "x"}}, 140},
		{devices.Job{Kind: devices.JobRetarget, Model: "M", Site: "a"}, 40},
		{devices.Job{Kind: devices.JobSiteConfig, Site: "a"}, 40},
		{devices.Job{Kind: devices.JobRevoke, Selector: devices.Selector{Site: "a"}, Reason: "test"}, 140},
	} {
		j := c.j
		t.Run(string(j.Kind), func(t *testing.T) {
			done := runJob(t, s, j, n)
			if done.Changed != c.want {
				t.Fatalf("%s changed %d devices, want %d", j.Kind, done.Changed, c.want)
			}
		})
	}
}

// TestImportResumesAfterACrash: a factory import stopped after two chunks
// goes on from its third after a restart; every new row becomes exactly one
// device, duplicates and clashes are reported as before.
func TestImportResumesAfterACrash(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	importOne(t, s, "SN-007", "") // registered before, with another token: a clash
	var rows []devices.ImportRow
	for i := range 50 {
		serial := fmt.Sprintf("SN-%03d", i)
		rows = append(rows, devices.ImportRow{Serial: serial, Model: "M", TokenHash: hash(serial + "x")})
	}
	rows = append(rows, rows[3]) // a duplicate within the batch
	job, err := s.StartImport(ctx, devices.Batch{ID: "b-1"}, rows, devices.AuditEvent{Action: "batch.import", Target: "b-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if job, _, err = s.RunJobChunk(ctx, job.ID, 8, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	s.Close() // the crash

	s, err = openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for job.State == devices.JobRunning {
		if job, _, err = s.RunJobChunk(ctx, job.ID, 8, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	b, res, err := s.FinishImport(ctx, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if b.Count != 49 || len(res) != 51 {
		t.Fatalf("batch of %d devices, %d results; want 49 and 51", b.Count, len(res))
	}
	if res[7].Status != devices.RowRejected || res[50].Status != devices.RowRejected || !strings.Contains(res[50].Reason, "row 4") {
		t.Errorf("clash %+v, duplicate %+v", res[7], res[50])
	}
	list, _, err := s.Devices(ctx, devices.Filter{Batch: "b-1", Limit: 1000})
	if err != nil || len(list) != 49 {
		t.Fatalf("%d devices in the batch, %v", len(list), err)
	}
	h, _ := s.History(ctx, "b-1", 10)
	if len(h) != 1 || h[0].Detail["created"] != "49" {
		t.Errorf("batch audit events: %+v", h)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %v", err, problems)
	}
	// FinishImport cleared the staged rows.
	if _, _, err := s.FinishImport(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
}
