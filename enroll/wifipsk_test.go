package enroll_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/pki/seal"
)

// A site with per-device PSKs gives each device a passphrase of its own at
// its enrollment: sealed in the inventory, in the device's config, served
// by MAC (WiFiKey) while the device is enrolled, kept through a renewal and
// a replayed answer, gone with a revocation; a device enrolled before the
// site switched gets one at its next lease renewal.
func TestPerDeviceWiFiPSK(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, enroll.Config{})
	op := enroll.Actor{Name: "test"}
	if _, err := f.fleet.CreateSite(ctx, op, devices.Site{Name: "ppsk", SSID: "Plant", Security: devices.SecurityWPA2PSK,
		Passphrase: "site-passphrase", PerDevicePSK: true, CIDR: netip.MustParsePrefix("10.7.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.fleet.CreateSite(ctx, op, devices.Site{Name: "sae", SSID: "S", Security: devices.SecurityWPA3SAE,
		Passphrase: "site-passphrase", PerDevicePSK: true, CIDR: netip.MustParsePrefix("10.8.0.0/24")}); !errors.Is(err, devices.ErrInvalid) {
		t.Fatalf("per-device PSKs on a wpa3-sae site: %v, want ErrInvalid", err)
	}
	enrollOne := func(site, mac string) (string, enroll.Result) {
		t.Helper()
		serial, tok := f.device(t, site)
		res, err := f.svc.Enroll(ctx, enroll.Request{Serial: serial, ClaimToken: tok, CSR: csr(t), Source: src, MAC: mac})
		if err != nil {
			t.Fatal(err)
		}
		return serial, res
	}
	s1, r1 := enrollOne("ppsk", "02:00:5e:10:07:01")
	_, r2 := enrollOne("ppsk", "02:00:5e:10:07:02")
	p1, p2 := r1.Config.WiFi.Passphrase, r2.Config.WiFi.Passphrase
	if len(p1) != 26 || p1 == "site-passphrase" || p1 == p2 {
		t.Fatalf("per-device passphrases %q and %q", p1, p2)
	}
	d1, _ := f.store.DeviceBySerial(ctx, s1)
	if !strings.HasPrefix(d1.WiFiPSK, seal.Prefix) || strings.Contains(d1.WiFiPSK, p1) {
		t.Fatalf("the stored passphrase is not sealed: %q", d1.WiFiPSK)
	}
	// The RADIUS server's question, in any spelling of the MAC.
	k, err := f.svc.WiFiKey(ctx, "02-00-5E-10-07-01")
	if err != nil || k.Passphrase != p1 || !k.PerDevice || k.SSID != "Plant" || k.Device.Serial != s1 {
		t.Fatalf("WiFiKey: %+v, %v", k, err)
	}
	// A renewal and a config fetch keep it.
	cfg, err := f.svc.RenewLease(ctx, r1.DeviceID, src, "coap")
	if err != nil || cfg.WiFi.Passphrase != p1 {
		t.Fatalf("after a renewal: %q, %v", cfg.WiFi.Passphrase, err)
	}
	for _, c := range []struct {
		mac  string
		want error
	}{
		{"02:00:5e:10:07:99", enroll.ErrUnknownDevice},
		{"not-a-mac", enroll.ErrInvalid},
	} {
		if _, err := f.svc.WiFiKey(ctx, c.mac); !errors.Is(err, c.want) {
			t.Errorf("WiFiKey(%s): %v, want %v", c.mac, err, c.want)
		}
	}
	// Revoked: served to nobody, and the sealed passphrase is gone.
	if _, _, err := f.fleet.Revoke(ctx, op, devices.Selector{IDs: []uuid.UUID{r1.DeviceID}}, "stolen"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.WiFiKey(ctx, "02:00:5e:10:07:01"); !errors.Is(err, enroll.ErrRevoked) {
		t.Fatalf("WiFiKey of a revoked device: %v, want ErrRevoked", err)
	}
	if d1, _ = f.store.DeviceBySerial(ctx, s1); d1.WiFiPSK != "" {
		t.Fatal("a revoked device kept its Wi-Fi passphrase")
	}
	// Enterprise: no passphrase to serve.
	if _, err := f.fleet.CreateSite(ctx, op, devices.Site{Name: "eap", SSID: "E", Security: devices.SecurityWPA2Enterprise,
		CIDR: netip.MustParsePrefix("10.9.0.0/24")}); err != nil {
		t.Fatal(err)
	}
	enrollOne("eap", "02:00:5e:10:09:01")
	if _, err := f.svc.WiFiKey(ctx, "02:00:5e:10:09:01"); !errors.Is(err, enroll.ErrNoPSK) {
		t.Fatalf("WiFiKey of an enterprise device: %v, want ErrNoPSK", err)
	}
	// A device of a shared-passphrase site: the site's passphrase; when the
	// site switches to per-device PSKs, its next renewal gives it its own.
	f.site(t, "shared", "10.10.0.0/24")
	s3, r3 := enrollOne("shared", "02:00:5e:10:0a:01")
	if k, err := f.svc.WiFiKey(ctx, "02:00:5e:10:0a:01"); err != nil || k.Passphrase != "12345678" || k.PerDevice {
		t.Fatalf("WiFiKey on a shared-passphrase site: %+v, %v", k, err)
	}
	if _, err := f.fleet.UpdateSite(ctx, op, "shared", func(s *devices.Site) error { s.PerDevicePSK = true; return nil }); err != nil {
		t.Fatal(err)
	}
	before, _ := f.store.DeviceBySerial(ctx, s3)
	cfg, err = f.svc.RenewLease(ctx, r3.DeviceID, src, "coap")
	if err != nil || len(cfg.WiFi.Passphrase) != 26 || cfg.Version <= before.ConfigVersion {
		t.Fatalf("renewal after the site switched: %+v (version %d before), %v", cfg.WiFi, before.ConfigVersion, err)
	}
	if k, err := f.svc.WiFiKey(ctx, "02:00:5e:10:0a:01"); err != nil || k.Passphrase != cfg.WiFi.Passphrase || !k.PerDevice {
		t.Fatalf("WiFiKey after the switch: %+v, %v", k, err)
	}
	if ev, _ := f.store.History(ctx, s3, 1); len(ev) != 1 || ev[0].Action != "device.wifi_psk" {
		t.Fatalf("no device.wifi_psk audit event: %+v", ev)
	}
}
