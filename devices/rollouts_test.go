package devices_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
)

// TestRolloutsAndPinsLiveInTheInventory: a rollout change and its audit
// event are one transaction and survive a restart; a pin is part of the
// device record, so a device re-opened under a new ID keeps it.
func TestRolloutsAndPinsLiveInTheInventory(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := site("hq", "10.1.0.0/24")
	st.Reenroll = devices.NewIdentity
	if _, err := s.CreateSite(ctx, st, devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	r := devices.Rollout{ID: "r1", Model: "M", Site: "hq", Version: "1.1", Previous: "1.0", Percent: 10, State: devices.RolloutActive}
	if _, err := s.ChangeRollout(ctx, "M", "hq", func(old *devices.Rollout) (devices.Rollout, error) {
		if old != nil {
			t.Errorf("a first rollout found %+v", old)
		}
		return r, nil
	}, devices.AuditEvent{Actor: "token:x", Action: "firmware.rollout", Target: "M@hq"}); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("refused")
	if _, err := s.ChangeRollout(ctx, "M", "hq", func(old *devices.Rollout) (devices.Rollout, error) {
		return devices.Rollout{}, boom
	}, devices.AuditEvent{Action: "firmware.rollout", Target: "M@hq"}); !errors.Is(err, boom) {
		t.Fatalf("a refused change: %v", err)
	}
	if _, err := s.ChangeRollout(ctx, "M", "hq", func(*devices.Rollout) (devices.Rollout, error) {
		return devices.Rollout{Model: "M", Site: "lab"}, nil
	}, devices.AuditEvent{}); !errors.Is(err, devices.ErrInvalid) {
		t.Fatalf("a rollout stored under another key: %v", err)
	}
	h, _ := s.History(ctx, "M@hq", 10)
	if len(h) != 1 || h[0].Detail["version"] != "1.1" || h[0].Detail["previous"] != "1.0" || h[0].Detail["percent"] != "10" {
		t.Fatalf("rollout audit events: %+v", h)
	}

	d := importOne(t, s, "PINNED", "hq")
	if _, err := s.UpdateDevice(ctx, d.ID, func(x *devices.Device) (*devices.AuditEvent, error) {
		x.FirmwarePin = "0.9"
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	runJob(t, s, devices.Job{Kind: devices.JobRevoke, Selector: devices.Selector{IDs: []uuid.UUID{d.ID}}, Reason: "test"}, 10)
	newID := uuid.New()
	if _, err := s.Reopen(ctx, d.ID, hash("fresh"), newID, time.Now(), devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rs, err := s.Rollouts(ctx)
	if err != nil || len(rs) != 1 || rs[0] != r {
		t.Fatalf("rollouts after a restart: %+v, %v", rs, err)
	}
	rekeyed, err := s.Device(ctx, newID)
	if err != nil || rekeyed.FirmwarePin != "0.9" {
		t.Fatalf("the re-keyed device: pin %q, %v", rekeyed.FirmwarePin, err)
	}
}

// TestImportTargets: rollouts and pins from an older version's file come in
// once; what the inventory holds wins, pins of unknown devices are dropped.
func TestImportTargets(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	s.CreateSite(ctx, site("hq", "10.1.0.0/24"), devices.AuditEvent{})
	d := importOne(t, s, "A", "hq")
	kept := devices.Rollout{ID: "new", Model: "M", Version: "2.0", Percent: 100, State: devices.RolloutActive}
	s.ChangeRollout(ctx, "M", "", func(*devices.Rollout) (devices.Rollout, error) { return kept, nil }, devices.AuditEvent{})
	nr, np, err := s.ImportTargets(ctx, []devices.Rollout{
		{ID: "old", Model: "M", Version: "1.0", Percent: 100, State: devices.RolloutActive},
		{ID: "site", Model: "M", Site: "hq", Version: "1.5", Percent: 20, State: devices.RolloutPaused},
	}, map[uuid.UUID]string{d.ID: "1.2", uuid.New(): "9.9"}, time.Now(), devices.AuditEvent{Action: "firmware.targets.import"})
	if err != nil || nr != 1 || np != 1 {
		t.Fatalf("imported %d rollouts, %d pins, %v", nr, np, err)
	}
	rs, _ := s.Rollouts(ctx)
	if len(rs) != 2 || rs[0] != kept || rs[1].ID != "site" {
		t.Fatalf("rollouts: %+v", rs)
	}
	if got, _ := s.Device(ctx, d.ID); got.FirmwarePin != "1.2" {
		t.Fatalf("pin: %q", got.FirmwarePin)
	}
}
