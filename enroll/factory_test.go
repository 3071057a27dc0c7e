package enroll_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/pki/mfr"
)

var admin = enroll.Actor{Name: "test"}

func newMfr(t testing.TB, name string) *mfr.CA {
	t.Helper()
	ca, err := mfr.New(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func idevid(t testing.TB, ca *mfr.CA, serial string, o mfr.Options) mfr.IDevID {
	t.Helper()
	id, err := ca.Issue(serial, o)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (f *fixture) addFactoryCA(t testing.TB, ca *mfr.CA, spec enroll.FactoryCASpec) devices.FactoryCA {
	t.Helper()
	spec.Cert = ca.CertPEM()
	if spec.Model == "" {
		spec.Model = "M"
	}
	out, err := f.fleet.AddFactoryCA(context.Background(), admin, spec)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) enrollFactory(serial string, chain ...*x509.Certificate) (enroll.Result, error) {
	return f.svc.Enroll(context.Background(), enroll.Request{Serial: serial, CSR: csrOf(chain), Factory: chain, Source: src, Transport: "test"})
}

// csrOf makes a fresh CSR (the device's operational key is new; the IDevID
// key stays in the secure element).
func csrOf([]*x509.Certificate) []byte { return csr(nil) }

// A device whose factory certificate chains to a registered manufacturer CA
// enrolls without a claim token, as the serial the certificate names, and
// its record says which CA vouched for it.
func TestFactoryCertificateEnrolls(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "plant", "10.1.0.0/24")
	serial, _ := f.device(t, "plant")
	root := newMfr(t, "Acme Devices")
	reg := f.addFactoryCA(t, root, enroll.FactoryCASpec{})
	id := idevid(t, root, serial, mfr.Options{})
	res, err := f.enrollFactory("", id.Cert)
	if err != nil {
		t.Fatal(err)
	}
	d, err := f.store.DeviceBySerial(context.Background(), serial)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != devices.StateProvisioned || d.FactoryCA != reg.ID || res.DeviceID != d.ID {
		t.Fatalf("device after enrolling with its IDevID: state %s factory CA %q", d.State, d.FactoryCA)
	}
	hist, err := f.store.History(context.Background(), serial, 10)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range hist {
		if ev.Action == "device.enroll" && ev.Detail["auth"] == "factory-certificate" && ev.Detail["factory_ca"] == reg.ID {
			found = true
		}
	}
	if !found {
		t.Errorf("no device.enroll event naming the factory CA in %+v", hist)
	}
}

// A registered intermediate speaks for its devices; the device presents it
// in its chain. The CN is read where the subject has no serialNumber.
func TestFactoryIntermediateAndCN(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "plant", "10.1.0.0/24")
	serial, _ := f.device(t, "plant")
	root := newMfr(t, "Acme Devices")
	line, err := root.Intermediate("Acme line 3")
	if err != nil {
		t.Fatal(err)
	}
	f.addFactoryCA(t, root, enroll.FactoryCASpec{})
	id := idevid(t, line, serial, mfr.Options{CNOnly: true})
	if _, err := f.enrollFactory(serial, id.Cert, line.Cert); err != nil {
		t.Fatal(err)
	}
}

// With auto-registration, an unknown serial under the CA is registered on
// first contact: claimed for the CA's site it enrolls at once; with no site
// it waits to be claimed (a retry hint), registered once.
func TestFactoryAutoRegister(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "plant", "10.1.0.0/24")
	withSite, noSite := newMfr(t, "Acme A"), newMfr(t, "Acme B")
	f.addFactoryCA(t, withSite, enroll.FactoryCASpec{AutoRegister: true, Site: "plant", Batch: "acme-a"})
	f.addFactoryCA(t, noSite, enroll.FactoryCASpec{AutoRegister: true})

	a := idevid(t, withSite, "ACME-A-0001", mfr.Options{})
	if _, err := f.enrollFactory("", a.Cert); err != nil {
		t.Fatal(err)
	}
	d, err := f.store.DeviceBySerial(context.Background(), "ACME-A-0001")
	if err != nil || d.State != devices.StateProvisioned || d.BatchID != "acme-a" || d.Model != "M" {
		t.Fatalf("auto-registered device: %+v %v", d, err)
	}

	b := idevid(t, noSite, "ACME-B-0001", mfr.Options{})
	for range 2 {
		_, err = f.enrollFactory("", b.Cert)
		if wait, ok := enroll.RetryAfter(err); !errors.Is(err, enroll.ErrNotClaimed) || !ok || wait <= 0 {
			t.Fatalf("unclaimed auto-registered device: %v, want ErrNotClaimed with a retry hint", err)
		}
	}
	d, err = f.store.DeviceBySerial(context.Background(), "ACME-B-0001")
	if err != nil || d.State != devices.StateManufactured {
		t.Fatalf("auto-registered device without a site: %+v %v", d, err)
	}
}

// Expired factory certificates are accepted only where the CA's policy
// says; one not yet valid never is.
func TestFactoryExpiredPolicy(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "plant", "10.1.0.0/24")
	strict, lenient := newMfr(t, "Strict"), newMfr(t, "Lenient")
	f.addFactoryCA(t, strict, enroll.FactoryCASpec{})
	f.addFactoryCA(t, lenient, enroll.FactoryCASpec{AllowExpired: true})
	old := mfr.Options{NotBefore: time.Now().AddDate(-3, 0, 0), NotAfter: time.Now().AddDate(-1, 0, 0)}

	s1, _ := f.device(t, "plant")
	if _, err := f.enrollFactory("", idevid(t, strict, s1, old).Cert); !errors.Is(err, enroll.ErrUnauthorized) {
		t.Fatalf("expired IDevID under a strict CA: %v, want ErrUnauthorized", err)
	}
	if _, err := f.enrollFactory("", idevid(t, lenient, s1, old).Cert); err != nil {
		t.Fatalf("expired IDevID under a CA that accepts them: %v", err)
	}
	s2, _ := f.device(t, "plant")
	future := mfr.Options{NotBefore: time.Now().Add(48 * time.Hour)}
	if _, err := f.enrollFactory("", idevid(t, lenient, s2, future).Cert); !errors.Is(err, enroll.ErrUnauthorized) {
		t.Fatalf("IDevID not yet valid: %v, want ErrUnauthorized", err)
	}
}

// Every refusal is an authentication failure, and writes nothing.
func TestFactoryRefusals(t *testing.T) {
	f := newFixture(t, enroll.Config{MaxFailures: 1000})
	f.site(t, "plant", "10.1.0.0/24")
	serial, _ := f.device(t, "plant")
	root := newMfr(t, "Acme")
	other := newMfr(t, "Unregistered")
	removed := newMfr(t, "Removed")
	otherModel := newMfr(t, "Other model")
	batchCA := newMfr(t, "Batch only")
	f.addFactoryCA(t, root, enroll.FactoryCASpec{})
	f.addFactoryCA(t, otherModel, enroll.FactoryCASpec{Model: "N"})
	rm := f.addFactoryCA(t, removed, enroll.FactoryCASpec{AutoRegister: true, Site: "plant"})
	if _, err := f.fleet.RemoveFactoryCA(context.Background(), admin, rm.ID[:12]); err != nil {
		t.Fatal(err)
	}
	// A batch of its own that the device is not in.
	f.device(t, "plant")
	var batchID string
	if d, err := f.store.DeviceBySerial(context.Background(), serial); err == nil {
		batchID = d.BatchID
	}
	other2, _ := f.device(t, "plant")
	d2, _ := f.store.DeviceBySerial(context.Background(), other2)
	f.addFactoryCA(t, batchCA, enroll.FactoryCASpec{Batch: d2.BatchID})
	if d2.BatchID == batchID {
		t.Fatal("the two devices share a batch: the batch case tests nothing")
	}
	selfSigned := newMfr(t, serial) // a CA certificate whose CN is the serial

	cases := []struct {
		name   string
		serial string
		chain  []*x509.Certificate
	}{
		{"unregistered CA", "", []*x509.Certificate{idevid(t, other, serial, mfr.Options{}).Cert}},
		{"removed CA", "", []*x509.Certificate{idevid(t, removed, "NEW-0001", mfr.Options{}).Cert}},
		{"self-signed", "", []*x509.Certificate{selfSigned.Cert}},
		{"the registered CA itself", "", []*x509.Certificate{root.Cert}},
		{"another model's CA", "", []*x509.Certificate{idevid(t, otherModel, serial, mfr.Options{}).Cert}},
		{"a batch the device is not in", "", []*x509.Certificate{idevid(t, batchCA, serial, mfr.Options{}).Cert}},
		{"unknown serial, no auto-registration", "", []*x509.Certificate{idevid(t, root, "UNKNOWN-1", mfr.Options{}).Cert}},
		{"serial differs from the certificate's", serial, []*x509.Certificate{idevid(t, root, other2, mfr.Options{}).Cert}},
		{"no serial in the subject", "", []*x509.Certificate{idevid(t, root, "", mfr.Options{}).Cert}},
	}
	before, _ := f.store.Digest(context.Background())
	signed := f.signer.signed.Load()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := f.enrollFactory(c.serial, c.chain...)
			if !errors.Is(err, enroll.ErrUnauthorized) {
				t.Fatalf("got %v, want ErrUnauthorized", err)
			}
		})
	}
	if after, _ := f.store.Digest(context.Background()); after != before {
		t.Error("a refused factory certificate changed the inventory")
	}
	if f.signer.signed.Load() != signed {
		t.Error("a refused factory certificate got a certificate signed")
	}
}

// A CA certificate is what may be registered, once.
func TestAddFactoryCARefusals(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	root := newMfr(t, "Acme")
	leaf := idevid(t, root, "X-1", mfr.Options{})
	ctx := context.Background()
	for _, c := range []struct {
		name string
		spec enroll.FactoryCASpec
		want error
	}{
		{"a device certificate", enroll.FactoryCASpec{Cert: leaf.Cert.Raw, Model: "M"}, enroll.ErrInvalid},
		{"garbage", enroll.FactoryCASpec{Cert: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), Model: "M"}, enroll.ErrInvalid},
		{"no model", enroll.FactoryCASpec{Cert: root.CertPEM()}, enroll.ErrInvalid},
		{"bad serial field", enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M", SerialFields: []string{"emailAddress"}}, enroll.ErrInvalid},
		{"a site without auto-registration", enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M", Site: "plant"}, enroll.ErrInvalid},
		{"an unknown batch without auto-registration", enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M", Batch: "nope"}, devices.ErrNotFound},
		{"an unknown site", enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M", Site: "nope", AutoRegister: true}, devices.ErrNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := f.fleet.AddFactoryCA(ctx, admin, c.spec); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := f.fleet.AddFactoryCA(ctx, enroll.Actor{Name: "x", Sites: []string{"a"}}, enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M"}); !errors.Is(err, enroll.ErrForbidden) {
		t.Fatalf("site-limited actor: %v, want ErrForbidden", err)
	}
	f.addFactoryCA(t, root, enroll.FactoryCASpec{})
	if _, err := f.fleet.AddFactoryCA(ctx, admin, enroll.FactoryCASpec{Cert: root.CertPEM(), Model: "M"}); !errors.Is(err, devices.ErrExists) {
		t.Fatalf("registered twice: %v, want ErrExists", err)
	}
	cas, err := f.fleet.FactoryCAs(ctx)
	if err != nil || len(cas) != 1 {
		t.Fatalf("list: %v %d", err, len(cas))
	}
}
