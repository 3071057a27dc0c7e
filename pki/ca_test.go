package pki_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/pki/profile"
	"golang.org/x/crypto/ocsp"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/pki"
)

var pass = []byte("0123456789abcdef")

func openCA(t testing.TB, dir, tmpl string) *pki.CA {
	t.Helper()
	ca, _, err := pki.Open(pki.Config{Dir: dir, Passphrase: pass, DeviceTemplate: tmpl})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func hostileCSR(t testing.TB) (*x509.CertificateRequest, *ecdsa.PrivateKey) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "admin", Organization: []string{"Evil"}},
		DNSNames: []string{"provisiond.example.com"},
		URIs:     []*url.URL{{Scheme: "urn", Opaque: "uuid:11111111-1111-1111-1111-111111111111"}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	return csr, key
}

func TestDeviceIdentityIsTheServers(t *testing.T) {
	custom := `{"subject": {"commonName": "ignored", "organization": ["Acme Fleet"]},
		"dnsNames": {{ toJson .Insecure.CR.DNSNames }},
		"uris": ["https://acme.example/devices/{{ .Serial }}"],
		"keyUsage": ["digitalSignature"], "extKeyUsage": ["clientAuth"]}`
	for _, c := range []struct{ name, tmpl string }{{"default template", ""}, {"operator template", custom}} {
		t.Run(c.name, func(t *testing.T) {
			ca := openCA(t, t.TempDir(), c.tmpl)
			csr, key := hostileCSR(t)
			id := profile.Device{ID: uuid.New(), Serial: "SN-1", Model: "M", Site: "hq"}
			cert, err := ca.IssueDevice(csr, id)
			if err != nil {
				t.Fatal(err)
			}
			if cert.Subject.CommonName != id.ID.String() || cert.URIs[0].String() != "urn:uuid:"+id.ID.String() {
				t.Errorf("identity CN=%q URIs=%v, want the device UUID", cert.Subject.CommonName, cert.URIs)
			}
			for _, u := range cert.URIs {
				if u.String() == "urn:uuid:11111111-1111-1111-1111-111111111111" {
					t.Error("the CSR's requested URI made it into the certificate")
				}
			}
			if c.tmpl == "" && (len(cert.DNSNames) != 0 || len(cert.Subject.Organization) != 0) {
				t.Errorf("default template copied CSR names: %v %v", cert.DNSNames, cert.Subject.Organization)
			}
			if c.tmpl != "" && (len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != "Acme Fleet") {
				t.Errorf("operator template ignored: %v", cert.Subject.Organization)
			}
			if !key.PublicKey.Equal(cert.PublicKey) {
				t.Error("certificate is not for the CSR's key")
			}
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(ca.Root())
			inter.AddCert(ca.Intermediate())
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("chain: %v", err)
			}
			if life := cert.NotAfter.Sub(cert.NotBefore); life < 90*24*time.Hour || life > 90*24*time.Hour+2*time.Minute {
				t.Errorf("lifetime %v, want 90 days (+ backdate)", life)
			}
		})
	}
}

func TestKeysEncryptedAtRest(t *testing.T) {
	dir := t.TempDir()
	openCA(t, dir, "")
	for _, f := range []string{pki.RootKeyFile, pki.IntermediateKeyFile} {
		raw, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(raw)
		if blk == nil || blk.Type != "ENCRYPTED PRIVATE KEY" {
			t.Errorf("%s is not an encrypted PKCS#8 key", f)
		}
		if st, _ := os.Stat(filepath.Join(dir, f)); st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	again := openCA(t, dir, "")
	if again.Root().SerialNumber.Cmp(again.Root().SerialNumber) != 0 {
		t.Error("reopen changed the root")
	}
	if _, _, err := pki.Open(pki.Config{Dir: dir, Passphrase: []byte("wrong-passphrase-123")}); !errors.Is(err, pki.ErrBadPassphrase) {
		t.Errorf("wrong passphrase: %v, want ErrBadPassphrase", err)
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	openCA(t, dir, "")
	os.Remove(filepath.Join(dir, pki.IntermediateKeyFile))
	if _, _, err := pki.Open(pki.Config{Dir: dir, Passphrase: pass}); !errors.Is(err, pki.ErrIncompleteCA) {
		t.Errorf("missing key: %v, want ErrIncompleteCA", err)
	}
	if _, _, err := pki.Open(pki.Config{Dir: t.TempDir(), Passphrase: pass, DeviceTemplate: `{"subject": {{ .Nope `}); !errors.Is(err, pki.ErrTemplate) {
		t.Errorf("broken template: %v, want ErrTemplate", err)
	}
	if _, _, err := pki.Open(pki.Config{Dir: t.TempDir(), Passphrase: []byte("short")}); err == nil {
		t.Error("a short passphrase was accepted")
	}
}

func TestCheckKey(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	cases := []struct {
		name                     string
		pub                      any
		allow384, allow25519, ok bool
	}{
		{"P-256", &p256.PublicKey, false, false, true},
		{"P-384 off", &p384.PublicKey, false, false, false},
		{"P-384 on", &p384.PublicKey, true, false, true},
		{"P-521", &p521.PublicKey, true, true, false},
		{"Ed25519 off", edPub, false, false, false},
		{"Ed25519 on", edPub, false, true, true},
		{"RSA", &rsaKey.PublicKey, true, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := profile.CheckKey(c.pub, c.allow384, c.allow25519)
			if (err == nil) != c.ok || (err != nil && !errors.Is(err, pki.ErrUnsupportedKey)) {
				t.Errorf("CheckKey = %v, want ok=%v", err, c.ok)
			}
		})
	}
}

// BenchmarkIssueDevice compares our issuance (template + SoftCAS) with the
// floor: a plain x509.CreateCertificate with the same key.
func BenchmarkIssueDevice(b *testing.B) {
	ca := openCA(b, b.TempDir(), "")
	csr, _ := hostileCSR(b)
	id := profile.Device{ID: uuid.New(), Serial: "SN-1"}
	b.Run("provisiond", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ca.IssueDevice(csr, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	parentTpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	parentDER, _ := x509.CreateCertificate(rand.Reader, parentTpl, parentTpl, &interKey.PublicKey, interKey)
	parent, _ := x509.ParseCertificate(parentDER)
	b.Run("x509.CreateCertificate", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id.ID.String()},
					NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
				if _, err := x509.CreateCertificate(rand.Reader, tpl, parent, csr.PublicKey, interKey); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkECDSA is the floor every enrollment pays several times: P-256
// signatures and verifications on this machine.
func BenchmarkECDSA(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	digest := make([]byte, 32)
	sig, _ := ecdsa.SignASN1(rand.Reader, key, digest)
	b.Run("sign-P256", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := ecdsa.SignASN1(rand.Reader, key, digest); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("verify-P256", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if !ecdsa.VerifyASN1(&key.PublicKey, digest, sig) {
					b.Fatal("verify failed")
				}
			}
		})
	})
}

func TestServerCertificateRenews(t *testing.T) {
	ca := openCA(t, t.TempDir(), "")
	sc, err := ca.NewServerCertificate([]string{"localhost"}, nil, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sc.Now = func() time.Time { return now }
	first, _ := sc.Get()
	now = now.Add(time.Hour)
	if c, _ := sc.Get(); c != first {
		t.Error("reissued before two thirds of the lifetime")
	}
	now = now.Add(90 * time.Minute)
	second, err := sc.Get()
	if err != nil || second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 ||
		second.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(first.Leaf.PublicKey) {
		t.Fatalf("not reissued after two thirds of the lifetime: %v", err)
	}
	if err := second.Leaf.VerifyHostname("localhost"); err != nil {
		t.Error(err)
	}
}

// An OCSP request with a nonce gets a response that echoes it and that
// OpenSSL verifies against the CA (the signer in the response): what
// FreeRADIUS's use_nonce needs (docs/radius). Without a nonce the answer is
// x/crypto/ocsp's.
func TestOCSPEchoesTheNonce(t *testing.T) {
	openssl := testtools.Need(t, "openssl")
	dir := t.TempDir()
	ca := openCA(t, filepath.Join(dir, "ca"), "")
	csr, _ := hostileCSR(t)
	leaf, err := ca.IssueDevice(csr, profile.Device{ID: uuid.New(), Serial: "TH1-0001", Model: "TH1"})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, certs ...*x509.Certificate) string {
		var b []byte
		for _, c := range certs {
			b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	leafPEM, interPEM, rootPEM := write("leaf.pem", leaf), write("inter.pem", ca.Intermediate()), write("root.pem", ca.Root())
	for _, revoked := range []bool{false, true} {
		req := filepath.Join(dir, "req.der")
		if out, err := exec.Command(openssl, "ocsp", "-issuer", interPEM, "-cert", leafPEM, "-nonce", "-reqout", req).CombinedOutput(); err != nil {
			t.Fatalf("openssl ocsp -reqout: %v\n%s", err, out)
		}
		der, _ := os.ReadFile(req)
		resp, err := ca.OCSP(der, func(*big.Int) (pki.Status, error) {
			return pki.Status{Known: true, Revoked: revoked, RevokedAt: time.Now().Add(-time.Minute)}, nil
		}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		respPath := filepath.Join(dir, "resp.der")
		os.WriteFile(respPath, resp, 0o644)
		out, err := exec.Command(openssl, "ocsp", "-reqin", req, "-respin", respPath, "-CAfile", rootPEM, "-verify_other", interPEM,
			"-resp_text").CombinedOutput()
		want := "Cert Status: good"
		if revoked {
			want = "Cert Status: revoked"
		}
		if err != nil || !strings.Contains(string(out), "Response verify OK") || !strings.Contains(string(out), want) ||
			!strings.Contains(string(out), "OCSP Nonce") || strings.Contains(string(out), "Nonce Verify error") {
			t.Fatalf("openssl ocsp (revoked %v): %v\n%s", revoked, err, out)
		}
		// Go's client too, with and without a nonce: it checks that the
		// issuer signed the responder certificate the answer carries.
		plain, err := ocsp.CreateRequest(leaf, ca.Intermediate(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, r := range map[string][]byte{"with a nonce": der, "without": plain} {
			answer, err := ca.OCSP(r, func(*big.Int) (pki.Status, error) {
				return pki.Status{Known: true, Revoked: revoked, RevokedAt: time.Now().Add(-time.Minute)}, nil
			}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := ocsp.ParseResponseForCert(answer, leaf, ca.Intermediate())
			if wantStatus := map[bool]int{false: ocsp.Good, true: ocsp.Revoked}[revoked]; err != nil || parsed.Status != wantStatus {
				t.Fatalf("Go's OCSP client, %s (revoked %v): %v %+v", name, revoked, err, parsed)
			}
		}
	}
}

// BenchmarkOCSPResponse is the responder's cost of one answer with a nonce
// (parse, sign), the store lookup left out: the ceiling of OCSP answers per
// second a RADIUS server can get.
func BenchmarkOCSPResponse(b *testing.B) {
	openssl := testtools.Need(b, "openssl")
	dir := b.TempDir()
	ca := openCA(b, filepath.Join(dir, "ca"), "")
	csr, _ := hostileCSR(b)
	leaf, err := ca.IssueDevice(csr, profile.Device{ID: uuid.New(), Serial: "TH1-0001", Model: "TH1"})
	if err != nil {
		b.Fatal(err)
	}
	leafPEM, interPEM := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "inter.pem")
	os.WriteFile(leafPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}), 0o644)
	os.WriteFile(interPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Intermediate().Raw}), 0o644)
	req := filepath.Join(dir, "req.der")
	if out, err := exec.Command(openssl, "ocsp", "-issuer", interPEM, "-cert", leafPEM, "-nonce", "-reqout", req).CombinedOutput(); err != nil {
		b.Fatalf("%v\n%s", err, out)
	}
	der, _ := os.ReadFile(req)
	lookup := func(*big.Int) (pki.Status, error) { return pki.Status{Known: true}, nil }
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ca.OCSP(der, lookup, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "answers/s")
}
