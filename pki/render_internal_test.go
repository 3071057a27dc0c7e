package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"reflect"
	"testing"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/pki/profile"
)

// The default template is built directly, not rendered (defaultDevice):
// for every kind of identity and CSR, what it builds is exactly what the
// template renders to, and what gets signed is the same certificate.
func TestDefaultTemplateFastPath(t *testing.T) {
	ca, _, err := Open(Config{Dir: t.TempDir(), Passphrase: []byte("render-test-passphrase")})
	if err != nil {
		t.Fatal(err)
	}
	if ca.cfg.DeviceTemplate != DefaultDeviceTemplate {
		t.Fatalf("the default configuration has template %q", ca.cfg.DeviceTemplate)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	csrs := map[string]*x509.CertificateRequest{}
	for name, c := range map[string]struct {
		key crypto.Signer
		req x509.CertificateRequest
	}{
		"plain P-256": {p256, x509.CertificateRequest{}},
		"Ed25519":     {edKey, x509.CertificateRequest{Subject: pkix.Name{CommonName: "dev"}}},
		"hostile": {p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin", Organization: []string{"Evil"}},
			DNSNames: []string{"provisiond.example.com"}, URIs: []*url.URL{{Scheme: "urn", Opaque: "uuid:" + uuid.NewString()}}}},
	} {
		der, err := x509.CreateCertificateRequest(rand.Reader, &c.req, c.key)
		if err != nil {
			t.Fatal(err)
		}
		if csrs[name], err = x509.ParseCertificateRequest(der); err != nil {
			t.Fatal(err)
		}
	}
	ids := []profile.Device{
		{ID: uuid.New(), Serial: "SN-0001", Model: "TH1", Site: "hq"},
		{ID: uuid.New()},
		{ID: uuid.New(), Serial: `quote " back\slash <tag> & {{ .x }}`, Model: "ü", Site: "site with spaces"},
		{ID: uuid.New(), Serial: "ÅØ-日本-🙂"},
	}
	for name, csr := range csrs {
		for _, id := range ids {
			fast, err := ca.render(csr, id)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ca.renderTemplate(csr, id)
			if err != nil {
				t.Fatal(err)
			}
			if slow := finish(c, csr, id); !reflect.DeepEqual(fast, slow) {
				t.Errorf("%s, %+v:\n built    %+v\n rendered %+v", name, id, fast, slow)
			}
		}
		leaf, err := ca.IssueDevice(csr, ids[2])
		if err != nil {
			t.Fatal(err)
		}
		if leaf.Subject.SerialNumber != ids[2].Serial || leaf.Subject.CommonName != ids[2].ID.String() || len(leaf.URIs) != 1 ||
			leaf.KeyUsage != x509.KeyUsageDigitalSignature || !reflect.DeepEqual(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
			t.Errorf("%s: issued %+v", name, leaf)
		}
	}
}

// BenchmarkRender: the default template built directly, against rendering
// it (text/template and JSON).
func BenchmarkRender(b *testing.B) {
	ca, _, err := Open(Config{Dir: b.TempDir(), Passphrase: []byte("render-test-passphrase")})
	if err != nil {
		b.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	csr, _ := x509.ParseCertificateRequest(der)
	id := profile.Device{ID: uuid.New(), Serial: "SN-0001", Model: "TH1", Site: "hq"}
	b.Run("built", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ca.render(csr, id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("template", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := ca.renderTemplate(csr, id)
			if err != nil {
				b.Fatal(err)
			}
			finish(c, csr, id)
		}
	})
}
