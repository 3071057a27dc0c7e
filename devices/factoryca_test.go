package devices_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// A manufacturer CA registers once, lists, and registers devices on first
// contact exactly once however many first contacts race; removed, it
// registers no more.
func TestFactoryCAs(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	if _, err := s.CreateSite(ctx, site("plant", "10.9.0.0/24"), devices.AuditEvent{Action: "site.create"}); err != nil {
		t.Fatal(err)
	}
	ca := devices.FactoryCA{ID: "ab12", CertDER: []byte{1}, Model: "M", Batch: "line-1", Site: "plant", AutoRegister: true, AddedAt: time.Now()}
	if _, err := s.AddFactoryCA(ctx, ca, devices.AuditEvent{Action: "factory_ca.add", Target: "factory-ca:ab12"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddFactoryCA(ctx, ca, devices.AuditEvent{Action: "factory_ca.add"}); !errors.Is(err, devices.ErrExists) {
		t.Fatalf("twice: %v, want ErrExists", err)
	}
	bad := ca
	bad.ID, bad.AutoRegister, bad.Batch = "cd34", false, "no-such-batch"
	if _, err := s.AddFactoryCA(ctx, bad, devices.AuditEvent{}); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("unknown batch without auto-registration: %v", err)
	}
	cas, err := s.FactoryCAs(ctx)
	if err != nil || len(cas) != 1 || cas[0].ID != "ab12" {
		t.Fatalf("list: %+v %v", cas, err)
	}

	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			d, err := s.RegisterFactoryDevice(ctx, "ab12", "ACME-0001", time.Now(), devices.AuditEvent{Action: "device.register", Target: "ACME-0001"})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = d.ID.String()
		})
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("racing first contacts registered more than one device: %v", ids)
		}
	}
	d, err := s.DeviceBySerial(ctx, "ACME-0001")
	if err != nil || d.State != devices.StateClaimed || d.Site != "plant" || d.BatchID != "line-1" || d.FactoryCA != "ab12" {
		t.Fatalf("registered device: %+v %v", d, err)
	}
	if _, err := s.RemoveFactoryCA(ctx, "ab12", devices.AuditEvent{Action: "factory_ca.remove"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RegisterFactoryDevice(ctx, "ab12", "ACME-0002", time.Now(), devices.AuditEvent{}); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("after removal: %v, want ErrNotFound", err)
	}
	if _, err := s.DeviceBySerial(ctx, "ACME-0002"); !errors.Is(err, devices.ErrNotFound) {
		t.Fatalf("a device was registered under a removed CA: %v", err)
	}
}
