package server_test

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/pki/profile"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/lwm2m"
)

// lwm2mSite creates a site with an LwM2M bootstrap profile in mode.
func lwm2mSite(t *testing.T, env *servertest.Env, name, cidr string, mode devices.LwM2MSecurity) {
	t.Helper()
	env.Site(name, cidr)
	p := &devices.LwM2MProfile{ServerURI: "coaps://lwm2m.example.net:5684", ShortServerID: 101, Lifetime: 3600, Binding: "UQ",
		SecurityMode: mode, WiFi: true}
	if err := env.Client.Do(context.Background(), http.MethodPatch, "/api/v1/sites/"+name, httpapi.SiteRequest{LwM2M: p}, nil); err != nil {
		t.Fatal(err)
	}
}

// mintLwM2M mints n devices of site with bootstrap PSKs (and IDevIDs when idevid).
func mintLwM2M(t *testing.T, env *servertest.Env, n int, site string, idevid bool) []*simulator.Device {
	t.Helper()
	ctx := context.Background()
	m, err := env.Client.MintWith(ctx, httpapi.MintOptions{Model: "TEST", Count: n, Site: site, LwM2MPSK: true})
	if err != nil {
		t.Fatal(err)
	}
	if idevid {
		ca, err := mfr.New("Test Manufacturer")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.RegisterIDevIDs(ctx, &m, ca); err != nil {
			t.Fatal(err)
		}
	}
	out := make([]*simulator.Device, n)
	for i, b := range m.Bundles {
		if out[i], err = simulator.NewDevice(b); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func lwm2mCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A stock LwM2M client bootstraps with its bootstrap PSK or its factory
// certificate, in TLV, SenML CBOR and SenML JSON, and gets its management
// server account with credentials for the site's security mode: a
// certificate from provisiond's CA and its key, a fresh PSK (published for
// the management server), or EST (it enrolls over EST-coaps on the same
// session). The inventory records it as /enroll does: provisioned, a
// lease, a device.enroll audit event.
func TestLwM2MBootstrap(t *testing.T) {
	env := servertest.Start(t)
	lwm2mSite(t, env, "cert", "192.168.70.0/24", devices.LwM2MCertificate)
	lwm2mSite(t, env, "psk", "192.168.71.0/24", devices.LwM2MPSK)
	lwm2mSite(t, env, "est", "192.168.72.0/24", devices.LwM2MEST)
	yes := true // the psk and est sites give each device its own Wi-Fi passphrase
	for _, site := range []string{"psk", "est"} {
		if err := env.Client.Do(context.Background(), http.MethodPatch, "/api/v1/sites/"+site, httpapi.SiteRequest{PerDevicePSK: &yes}, nil); err != nil {
			t.Fatal(err)
		}
	}
	macs := 0
	pool := x509.NewCertPool()
	pool.AddCert(env.Server.CA().Root())
	inter := x509.NewCertPool()
	inter.AddCert(env.Server.CA().Intermediate())
	for _, tc := range []struct {
		name   string
		site   string
		opts   simulator.LwM2MOptions
		idevid bool
	}{
		{"psk auth, TLV, certificate mode", "cert", simulator.LwM2MOptions{PSK: true, Format: lwm2m.FormatTLV}, false},
		{"IDevID, SenML CBOR, certificate mode, no Discover", "cert", simulator.LwM2MOptions{Format: lwm2m.FormatSenMLCBOR, NoDiscover: true}, true},
		{"IDevID, SenML CBOR, psk mode", "psk", simulator.LwM2MOptions{Format: lwm2m.FormatSenMLCBOR}, true},
		{"psk auth, SenML JSON, psk mode, no WLAN object", "psk", simulator.LwM2MOptions{PSK: true, Format: lwm2m.FormatSenMLJSON, NoWLAN: true}, false},
		{"psk auth, no pct, est mode", "est", simulator.LwM2MOptions{PSK: true}, false},
		{"IDevID, SenML CBOR, est mode", "est", simulator.LwM2MOptions{Format: lwm2m.FormatSenMLCBOR}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := lwm2mCtx(t)
			dev := mintLwM2M(t, env, 1, tc.site, tc.idevid)[0]
			tc.opts.Endpoint = "coaps://" + env.CoAPS()
			res, err := dev.BootstrapLwM2M(ctx, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			wantFormat := tc.opts.Format
			if wantFormat == 0 {
				wantFormat = lwm2m.FormatTLV
			}
			if res.Format != wantFormat || !res.Deleted || !res.Discover || res.ServerURI != "coaps://lwm2m.example.net:5684" ||
				res.ShortServerID != 101 || res.Lifetime != 3600 || res.Binding != "UQ" {
				t.Fatalf("written: %+v", res)
			}
			if wantWLAN := !tc.opts.NoWLAN; wantWLAN != (res.SSID == "ssid-"+tc.site) || (wantWLAN && res.KeyPhrase == "") {
				t.Errorf("WLAN written: SSID %q, key phrase %q (object 12 listed: %v)", res.SSID, res.KeyPhrase, wantWLAN)
			}
			d, err := env.Server.Store().DeviceBySerial(ctx, dev.Bundle.Serial)
			if err != nil || d.State != devices.StateProvisioned || d.Lease == nil {
				t.Fatalf("device after bootstrap: %+v %v", d, err)
			}
			// The WLAN key phrase is the site's, or the device's own
			// passphrase, which the RADIUS server is then served (by a MAC
			// the test gives the device; LwM2M clients report none).
			if !tc.opts.NoWLAN {
				macs++
				mac := fmt.Sprintf("02:5e:10:00:04:%02x", macs)
				if _, err := env.Server.Store().UpdateDevice(ctx, d.ID, func(x *devices.Device) (*devices.AuditEvent, error) { x.MAC = mac; return nil, nil }); err != nil {
					t.Fatal(err)
				}
				var served map[string]struct{ Value string }
				if err := env.Client.Do(ctx, http.MethodGet, "/api/v1/radius/mac-auth?mac="+mac, nil, &served); err != nil {
					t.Fatal(err)
				}
				own := tc.site == "psk" || tc.site == "est"
				if got := served["reply:Tunnel-Password"].Value; got != res.KeyPhrase || own != (len(got) == 26 && d.WiFiPSK != "") || own == (got == "passphrase-"+tc.site) {
					t.Errorf("WLAN key phrase %q, served to RADIUS %q, per-device %v", res.KeyPhrase, got, own)
				}
			}
			switch tc.site {
			case "cert", "est":
				if res.Cert == nil || res.Key == nil {
					t.Fatalf("no certificate: mode %d", res.Mode)
				}
				if _, err := res.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Fatal(err)
				}
				id, serial, err := profile.Identify(res.Cert)
				if err != nil || id != d.ID || serial != d.CertSerial {
					t.Fatalf("certificate %v/%s, device %v/%s: %v", id, serial, d.ID, d.CertSerial, err)
				}
				if tc.site == "cert" && (res.Mode != lwm2m.ModeCertificate || !res.ServerCA.Equal(env.Server.CA().Root())) {
					t.Errorf("mode %d, server CA %v", res.Mode, res.ServerCA)
				}
				if tc.site == "est" && res.Mode != lwm2m.ModeEST {
					t.Errorf("mode %d", res.Mode)
				}
			case "psk":
				if res.Mode != lwm2m.ModePSK || res.PSKIdentity != dev.Bundle.Serial || len(res.PSK) != 32 || d.CertSerial != "" {
					t.Fatalf("psk mode: %+v, device cert %q", res, d.CertSerial)
				}
				if d.LwM2MPSK == "" || strings.Contains(d.LwM2MPSK, hex.EncodeToString(res.PSK)) {
					t.Fatalf("the management PSK is not sealed at rest: %q", d.LwM2MPSK)
				}
				var creds enroll.LwM2MCredentials
				if err := env.Client.Do(ctx, http.MethodGet, "/api/v1/devices/"+dev.Bundle.Serial+"/lwm2m-credentials", nil, &creds); err != nil {
					t.Fatal(err)
				}
				if creds.PSK != hex.EncodeToString(res.PSK) || creds.PSKIdentity != dev.Bundle.Serial || creds.Endpoint != dev.Bundle.Serial {
					t.Fatalf("published %+v, written %x", creds, res.PSK)
				}
			}
			page, err := env.Client.AuditNewest(ctx, "", 5)
			if err != nil {
				t.Fatal(err)
			}
			var ev *devices.AuditEvent
			for i := range page.Events {
				if page.Events[i].Action == "device.enroll" && page.Events[i].Target == dev.Bundle.Serial {
					ev = &page.Events[i]
				}
			}
			wantTransport := "lwm2m"
			if tc.site == "est" {
				wantTransport = "estcoaps"
			}
			if ev == nil || ev.Detail["transport"] != wantTransport || ev.Detail["device_id"] != d.ID.String() {
				t.Fatalf("audit: %+v", page.Events)
			}
		})
	}
}

// Refusals: each with its answer, and the inventory unchanged.
func TestLwM2MBootstrapRefusals(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t, func(c *server.Config) { c.LwM2MTimeout = 2 * time.Second })
	lwm2mSite(t, env, "cert", "192.168.73.0/24", devices.LwM2MCertificate)
	env.Site("plain", "192.168.74.0/24")
	devs := mintLwM2M(t, env, 3, "cert", true)
	plain := mintLwM2M(t, env, 1, "plain", false)[0]
	ep := "coaps://" + env.CoAPS()
	store := env.Server.Store()
	unchanged := func(t *testing.T, what string, run func(ctx context.Context) error, want string) {
		t.Helper()
		before, err := store.Digest(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		err = run(ctx)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", what, err, want)
		}
		if after, _ := store.Digest(context.Background()); after != before {
			t.Errorf("%s changed the inventory", what)
		}

	}
	unchanged(t, "an endpoint name that is not the certificate's", func(ctx context.Context) error {
		_, err := devs[0].BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, Name: devs[1].Bundle.Serial})
		return err
	}, "Unauthorized")
	unchanged(t, "a PSK identity that is not the endpoint's", func(ctx context.Context) error {
		b := devs[0].Bundle
		b.LwM2MPSK = devs[1].Bundle.LwM2MPSK // devs[1]'s key and identity, devs[0]'s endpoint
		d, _ := simulator.NewDevice(b)
		_, err := d.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, PSK: true, PSKIdentity: devs[1].Bundle.Serial})
		return err
	}, "Unauthorized")
	unchanged(t, "an unknown endpoint", func(ctx context.Context) error {
		_, err := devs[2].BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, Name: "NOPE-0001"})
		return err
	}, "Unauthorized")
	unchanged(t, "a wrong PSK", func(ctx context.Context) error {
		b := devs[2].Bundle
		b.LwM2MPSK = strings.Repeat("ab", 32)
		d, _ := simulator.NewDevice(b)
		_, err := d.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, PSK: true})
		return err
	}, "handshake")
	unchanged(t, "an unsupported pct", func(ctx context.Context) error {
		_, err := devs[2].BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, Format: message.MediaType(60)})
		return err
	}, "BadRequest")
	unchanged(t, "a site without an LwM2M profile", func(ctx context.Context) error {
		_, err := plain.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, PSK: true})
		return err
	}, "Forbidden")
	unchanged(t, "a client that never answers the Writes", func(ctx context.Context) error {
		_, err := devs[2].BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, MuteWrites: true})
		return err
	}, "closed the session")
}

// The life of an LwM2M device: a client that refuses Finish (4.06) may
// bootstrap again at once and gets fresh credentials, its first
// certificate superseded; later a bootstrap is refused until an operator
// asks for one (rebootstrap), which supersedes the certificate again; a
// revoked device is refused (4.03); a re-opened one bootstraps with fresh
// credentials.
func TestLwM2MRebootstrapAndRevocation(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t)
	lwm2mSite(t, env, "cert", "192.168.75.0/24", devices.LwM2MCertificate)
	dev := mintLwM2M(t, env, 1, "cert", false)[0]
	serial := dev.Bundle.Serial
	ep := "coaps://" + env.CoAPS()
	store := env.Server.Store()
	ctx := lwm2mCtx(t)
	boot := func(o simulator.LwM2MOptions) (*simulator.LwM2MBootstrap, error) {
		o.Endpoint, o.PSK = ep, true
		return dev.BootstrapLwM2M(ctx, o)
	}
	// authorized says whether a certificate a bootstrap wrote still opens a
	// mutual-DTLS session (GET /config).
	authorized := func(res *simulator.LwM2MBootstrap) error {
		d, err := simulator.NewDevice(dev.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		d.Key, d.Chain = res.Key, []*x509.Certificate{res.Cert}
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err = d.Config(c, simulator.EnrollOptions{Endpoint: ep})
		return err
	}

	// Finish refused: the record is committed before Finish, so the
	// device is provisioned; its retry gets new credentials.
	first, err := boot(simulator.LwM2MOptions{FinishAnswer: codes.NotAcceptable})
	if err == nil || !strings.Contains(err.Error(), "NotAcceptable") {
		t.Fatalf("finish refused: %v", err)
	}
	d1, _ := store.DeviceBySerial(ctx, serial)
	if d1.State != devices.StateProvisioned || d1.CertSerial == "" {
		t.Fatalf("after a refused Finish: %+v", d1)
	}
	second, err := boot(simulator.LwM2MOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d2, _ := store.DeviceBySerial(ctx, serial)
	if d2.CertSerial == d1.CertSerial || d2.Lease == nil || d2.Lease.Addr != d1.Lease.Addr {
		t.Fatalf("retry: certificate %s -> %s, lease %v -> %v", d1.CertSerial, d2.CertSerial, d1.Lease, d2.Lease)
	}
	if err1, err2 := authorized(first), authorized(second); first.Cert == nil || err1 == nil || err2 != nil {
		t.Fatalf("the superseded certificate: %v; the new one: %v", err1, err2)
	}

	// Past the retry window: refused until an operator asks.
	env.Clock.Advance(11 * time.Minute)
	if _, err := boot(simulator.LwM2MOptions{}); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("a second bootstrap without an operator: %v", err)
	}
	var view httpapi.DeviceView
	if err := env.Client.Do(ctx, http.MethodPost, "/api/v1/devices/"+serial+"/rebootstrap", nil, &view); err != nil {
		t.Fatal(err)
	}
	// The device may also come with the certificate it holds.
	third, err := dev.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, Certificate: true, Format: lwm2m.FormatSenMLCBOR})
	if err != nil {
		t.Fatal(err)
	}
	d3, _ := store.DeviceBySerial(ctx, serial)
	if d3.Rebootstrap || d3.CertSerial == d2.CertSerial || authorized(second) == nil || authorized(third) != nil {
		t.Fatalf("after the operator's re-bootstrap: %+v", d3)
	}
	env.Clock.Advance(11 * time.Minute) // past the retry window of that bootstrap
	if _, err := boot(simulator.LwM2MOptions{}); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("the operator's re-bootstrap let more than one through: %v", err)
	}
	// The CRL is reissued shortly after a supersession.
	var onCRL map[string]bool
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		crl, err := x509.ParseRevocationList(env.Server.CRL())
		if err != nil {
			t.Fatal(err)
		}
		onCRL = map[string]bool{}
		for _, e := range crl.RevokedCertificateEntries {
			onCRL[e.SerialNumber.Text(16)] = true
		}
		if onCRL[d1.CertSerial] && onCRL[d2.CertSerial] || time.Now().After(deadline) {
			break
		}
	}
	if !onCRL[d1.CertSerial] || !onCRL[d2.CertSerial] || onCRL[d3.CertSerial] {
		t.Errorf("CRL %v: want %s and %s, not %s", onCRL, d1.CertSerial, d2.CertSerial, d3.CertSerial)
	}

	// Revoked: refused with 4.03, nothing written.
	if err := env.Client.Do(ctx, http.MethodPost, "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{serial}, Reason: "stolen"}, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := store.Digest(ctx)
	if _, err := boot(simulator.LwM2MOptions{}); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("a revoked device's bootstrap: %v", err)
	}
	if after, _ := store.Digest(ctx); after != before {
		t.Error("a revoked device's bootstrap changed the inventory")
	}
	// Re-opened: it bootstraps again with fresh credentials.
	if err := env.Client.Do(ctx, http.MethodPost, "/api/v1/devices/"+serial+"/reopen", nil, nil); err != nil {
		t.Fatal(err)
	}
	fourth, err := boot(simulator.LwM2MOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d4, _ := store.DeviceBySerial(ctx, serial)
	if d4.State != devices.StateProvisioned || fourth.Cert.SerialNumber.Text(16) != d4.CertSerial || d4.CertSerial == d3.CertSerial {
		t.Fatalf("after re-opening: %+v", d4)
	}
}

// A deployment may serve LwM2M bootstrap on a port of its own and name
// endpoints by a pattern: the PSK identity and ep= are then the pattern's
// names, the management PSK is published under them, and a bare serial is
// not an endpoint name.
func TestLwM2MOwnPortAndEndpointPattern(t *testing.T) {
	env := servertest.Start(t, func(c *server.Config) {
		c.LwM2MAddr, c.LwM2MEndpoint = "127.0.0.1:0", "urn:dev:ops:acme-{serial}"
	})
	lwm2mSite(t, env, "psk", "192.168.76.0/24", devices.LwM2MPSK)
	dev := mintLwM2M(t, env, 1, "psk", false)[0]
	ctx := lwm2mCtx(t)
	ep := "coaps://" + env.Server.LwM2MAddr().String()
	name := "urn:dev:ops:acme-" + dev.Bundle.Serial
	if _, err := dev.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, PSK: true, PSKIdentity: name}); err == nil || !strings.Contains(err.Error(), "BadRequest") {
		t.Fatalf("ep=SERIAL under a pattern: %v", err)
	}
	res, err := dev.BootstrapLwM2M(ctx, simulator.LwM2MOptions{Endpoint: ep, PSK: true, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	if res.PSKIdentity != name {
		t.Errorf("management PSK identity %q, want %q", res.PSKIdentity, name)
	}
	var creds enroll.LwM2MCredentials
	if err := env.Client.Do(ctx, http.MethodGet, "/api/v1/devices/"+dev.Bundle.Serial+"/lwm2m-credentials", nil, &creds); err != nil {
		t.Fatal(err)
	}
	if creds.Endpoint != name || creds.PSKIdentity != name || creds.PSK != hex.EncodeToString(res.PSK) {
		t.Fatalf("published %+v", creds)
	}
}

// A bootstrap session opened with a factory certificate holds its
// handshake slot until its bootstrap ends, as a certificate-less or PSK one
// does, so that a storm cannot start more bootstraps than there are slots.
func TestLwM2MBootstrapHoldsItsHandshakeSlot(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t, func(c *server.Config) {
		c.LwM2MTimeout, c.HandshakeWait = 2*time.Second, 10*time.Second
	})
	lwm2mSite(t, env, "cert", "192.168.77.0/24", devices.LwM2MCertificate)
	dev := mintLwM2M(t, env, 1, "cert", true)[0]
	done := make(chan error, 1)
	go func() {
		_, err := dev.BootstrapLwM2M(lwm2mCtx(t), simulator.LwM2MOptions{Endpoint: "coaps://" + env.CoAPS(), MuteWrites: true})
		done <- err
	}()
	time.Sleep(time.Second) // the handshake is over; the Writes go unanswered
	if n := env.Server.Handshakes().InProgress; n != 1 {
		t.Fatalf("slots in use during the bootstrap: %d, want 1", n)
	}
	if err := <-done; err == nil {
		t.Fatal("a client that never answers bootstrapped")
	}
	for deadline := time.Now().Add(5 * time.Second); env.Server.Handshakes().InProgress != 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("slots in use after the bootstrap ended: %d", env.Server.Handshakes().InProgress)
		}
	}
}

// In EST mode a re-bootstrap ends with a new certificate too: the
// EST-coaps enrollment on the bootstrap session replaces the device's
// certificate (superseded) instead of being refused as a second enrollment.
func TestLwM2MESTModeRebootstrap(t *testing.T) {
	env := servertest.Start(t)
	lwm2mSite(t, env, "est", "192.168.78.0/24", devices.LwM2MEST)
	dev := mintLwM2M(t, env, 1, "est", false)[0]
	ctx := lwm2mCtx(t)
	o := simulator.LwM2MOptions{Endpoint: "coaps://" + env.CoAPS(), PSK: true}
	first, err := dev.BootstrapLwM2M(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	env.Clock.Advance(11 * time.Minute)
	if _, err := dev.BootstrapLwM2M(ctx, o); err == nil || !strings.Contains(err.Error(), "Forbidden") {
		t.Fatalf("a second bootstrap without an operator: %v", err)
	}
	if err := env.Client.Do(ctx, http.MethodPost, "/api/v1/devices/"+dev.Bundle.Serial+"/rebootstrap", nil, nil); err != nil {
		t.Fatal(err)
	}
	second, err := dev.BootstrapLwM2M(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := env.Server.Store().DeviceBySerial(ctx, dev.Bundle.Serial)
	if first.Cert.Equal(second.Cert) || d.CertSerial != second.Cert.SerialNumber.Text(16) || d.Rebootstrap {
		t.Fatalf("after the EST-mode re-bootstrap: %+v", d)
	}
	st, rc, err := env.Server.Store().CertStatus(ctx, first.Cert.SerialNumber.Text(16))
	if err != nil || st != devices.CertRevoked || rc.Reason != "superseded" {
		t.Fatalf("the first certificate: status %v %+v %v", st, rc, err)
	}
}
