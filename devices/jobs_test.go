package devices_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
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
	for _, j := range []devices.Job{
		{Kind: devices.JobOverride, Selector: devices.Selector{Site: "a"}, Override: &devices.ConfigOverride{SSID: "x"}},
		{Kind: devices.JobRetarget, Model: "M", Site: "a"},
		{Kind: devices.JobRevoke, Selector: devices.Selector{Site: "a"}, Reason: "test"},
	} {
		t.Run(string(j.Kind), func(t *testing.T) {
			done := runJob(t, s, j, n)
			if done.Changed != 40 {
				t.Fatalf("%s changed %d of 40 devices", j.Kind, done.Changed)
			}
		})
	}
}
