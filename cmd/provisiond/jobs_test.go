package main

import (
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestJobResumedAfterKill revokes a site of 2,000 devices as a job of
// 10-device chunks, kills provisiond with SIGKILL part-way through, starts
// it again and waits for the job to finish on its own: every device of the
// site is revoked, each with exactly one revocation event, and the
// inventory and the audit chains verify.
func TestJobResumedAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a provisiond process")
	}
	p := newProcess(t, "--job-chunk", "10")
	p.start()
	defer p.stop(syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := p.client()
	name, ssid, sec, pass, cidr := "hq", "hq", "wpa2-psk", "hq-passphrase", "10.60.0.0/20"
	if err := c.Do(ctx, "POST", "/api/v1/sites", httpapi.SiteRequest{Name: &name, SSID: &ssid, Security: &sec, Passphrase: &pass, CIDR: &cidr}, nil); err != nil {
		t.Fatal(err)
	}
	const n = 2000
	m, err := c.Mint(ctx, "JOB", n, "hq")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // its answer never comes: the server is killed under it
		_ = c.Do(ctx, http.MethodPost, "/api/v1/revocations", httpapi.RevokeRequest{Site: "hq", Reason: "site decommissioned"}, nil)
	}()
	// Kill once the job has done some chunks, not all.
	var job devices.Job
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		var list httpapi.JobList
		_ = c.Do(ctx, http.MethodGet, "/api/v1/jobs", nil, &list)
		i := slices.IndexFunc(list.Jobs, func(j devices.Job) bool { return j.Kind == devices.JobRevoke && j.Done >= 100 })
		if i >= 0 {
			job = list.Jobs[i]
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the revocation job made no progress")
		}
	}
	p.stop(syscall.SIGKILL)
	if job.State != devices.JobRunning || job.Total != n {
		t.Fatalf("at the kill the job was %+v: want it running over %d devices", job, n)
	}
	t.Logf("killed at %d of %d devices", job.Done, job.Total)
	p.start()
	c = p.client()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if err := c.Do(ctx, http.MethodGet, "/api/v1/jobs/"+job.ID, nil, &job); err == nil && job.State == devices.JobDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the job was not resumed to its end: %+v", job)
		}
	}
	if job.Done != n || job.Changed != n {
		t.Errorf("finished job: %+v, want %d done and changed", job, n)
	}
	p.stop(syscall.SIGTERM)

	s, err := server.OpenInventory(ctx, filepath.Join(p.data, server.InventoryFile), boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	revocations := map[string]int{}
	for after := ""; ; {
		page, err := s.Audit(ctx, devices.AuditQuery{Ascending: true, After: after})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range page {
			if ev.Action == "device.revoke" {
				revocations[ev.Target]++
			}
		}
		if len(page) < 1000 {
			break
		}
		after = page[len(page)-1].ID
	}
	for _, b := range m.Bundles {
		d, err := s.DeviceBySerial(ctx, b.Serial)
		if err != nil {
			t.Fatal(err)
		}
		if d.State != devices.StateRevoked || revocations[b.Serial] != 1 {
			t.Errorf("%s: %s, revoked %d times; want revoked exactly once", b.Serial, d.State, revocations[b.Serial])
		}
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) > 0 {
		t.Errorf("inventory: %v %v", err, problems)
	}
	if _, err := s.VerifyAudit(ctx); err != nil {
		t.Error(err)
	}
}
