package devices_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// Devices are found by the MAC they reported, whatever its spelling, and
// the index follows a changed MAC; a released lease frees its address for
// the next device, with its audit event.
func TestDevicesByMACAndReleaseLease(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	if _, err := s.CreateSite(ctx, site("hq", "10.5.0.0/30"), devices.AuditEvent{Action: "site.create"}); err != nil {
		t.Fatal(err)
	}
	a, b := importOne(t, s, "A-1", "hq"), importOne(t, s, "B-1", "hq")
	now := time.Now().UTC()
	provision := func(d devices.Device, mac string) devices.Device {
		t.Helper()
		d, err := s.Provision(ctx, devices.Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: now,
			Apply: func(x *devices.Device) { x.State, x.MAC = devices.StateProvisioned, mac }, Audit: devices.AuditEvent{Action: "device.enroll"}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a = provision(a, "02:00:5E:10:00:01")
	for _, spelling := range []string{"02:00:5e:10:00:01", "02-00-5E-10-00-01", "0200.5e10.0001"} {
		got, err := s.DevicesByMAC(ctx, spelling)
		if err != nil || len(got) != 1 || got[0].ID != a.ID {
			t.Fatalf("%s: %v %v", spelling, got, err)
		}
	}
	if got, err := s.DevicesByMAC(ctx, "02:00:5e:10:00:02"); err != nil || len(got) != 0 {
		t.Fatalf("an unreported MAC: %v %v", got, err)
	}
	if _, err := s.DevicesByMAC(ctx, "not a mac"); !errors.Is(err, devices.ErrInvalid) {
		t.Fatalf("not a MAC: %v", err)
	}
	// The /30 has one address besides the gateway... a's. b gets none
	// until a releases it.
	if _, err := s.Provision(ctx, devices.Provisioning{DeviceID: b.ID, Rev: b.Rev, Now: now,
		Apply: func(x *devices.Device) {}, Audit: devices.AuditEvent{Action: "device.enroll"}}); !errors.Is(err, devices.ErrPoolExhausted) {
		t.Fatalf("b in a full pool: %v", err)
	}
	released, err := s.ReleaseLease(ctx, a.ID, now, devices.AuditEvent{Actor: "device:A-1", Action: "lease.release", Target: "A-1"})
	if err != nil || released.Lease != nil {
		t.Fatalf("release: %+v %v", released.Lease, err)
	}
	b, _ = s.Device(ctx, b.ID)
	b = provision(b, "02:00:5e:10:00:01") // a replaced board reporting the same MAC
	if b.Lease == nil || b.Lease.Addr != a.Lease.Addr {
		t.Fatalf("b after a's release: %+v", b.Lease)
	}
	if got, _ := s.DevicesByMAC(ctx, "02:00:5e:10:00:01"); len(got) != 2 {
		t.Fatalf("two devices reported one MAC: %d found", len(got))
	}
	b2, err := s.UpdateDevice(ctx, b.ID, func(d *devices.Device) (*devices.AuditEvent, error) { d.MAC = "02:00:5e:10:00:03"; return nil, nil })
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := s.DevicesByMAC(ctx, "02:00:5e:10:00:01"); len(got) != 1 || got[0].ID != a.ID {
		t.Fatalf("the index did not follow b's new MAC %s: %v", b2.MAC, got)
	}
	evs, err := s.History(ctx, "A-1", 10)
	if err != nil {
		t.Fatal(err)
	}
	if last := evs[len(evs)-1]; last.Action != "lease.release" || last.Detail["address"] != a.Lease.Addr.String() {
		t.Fatalf("history: %+v", evs)
	}
}

func TestNormalizeMAC(t *testing.T) {
	for in, want := range map[string]string{
		"02:00:5E:10:00:01":       "02:00:5e:10:00:01",
		"02-00-5e-10-00-01":       "02:00:5e:10:00:01", // RADIUS Calling-Station-Id
		"0200.5e10.0001":          "02:00:5e:10:00:01",
		"02005E100001":            "02:00:5e:10:00:01", // bare, as some access points send it
		"02005E10000":             "",
		"02005E10000g":            "",
		"02:00:5e:10:00:01:02:03": "", // not 48 bits
	} {
		got, ok := devices.NormalizeMAC(in)
		if got != want || ok != (want != "") {
			t.Errorf("NormalizeMAC(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
