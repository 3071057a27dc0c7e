package enroll_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provisiond/provisiond/pki/profile"
	"github.com/provisiond/provisiond/pki/seal"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/pki"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	store  *devices.Store
	ca     *pki.CA
	signer *countingSigner
	svc    *enroll.Service
	fleet  *enroll.Fleet
	clock  *fakeClock
}

type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.now.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// countingSigner is the real CA, counting the certificates it signs.
type countingSigner struct {
	*pki.CA
	signed atomic.Int64
}

func (s *countingSigner) IssueDevice(csr *x509.CertificateRequest, id profile.Device) (*x509.Certificate, error) {
	s.signed.Add(1)
	return s.CA.IssueDevice(csr, id)
}

func newFixture(t testing.TB, cfg enroll.Config) *fixture {
	t.Helper()
	dir := t.TempDir()
	db, err := boltkv.Open(filepath.Join(dir, "inv.db"), boltkv.Options{Buckets: devices.Buckets})
	if err != nil {
		t.Fatal(err)
	}
	store, err := devices.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	ca, _, err := pki.Open(pki.Config{Dir: filepath.Join(dir, "ca"), Passphrase: []byte("0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: store, ca: ca, signer: &countingSigner{CA: ca}, clock: &fakeClock{}}
	f.clock.now.Store(time.Now().UnixNano())
	sealer, err := seal.New([]byte("fixture-master-secret-0123"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Secrets = sealer
	f.svc = enroll.New(cfg, enroll.Ports{Store: store, Signer: f.signer, Clock: f.clock}, quiet)
	f.fleet = enroll.NewFleet(enroll.FleetConfig{}, store, sealer, nil, quiet)
	return f
}

func (f *fixture) site(t testing.TB, name, cidr string) {
	t.Helper()
	_, err := f.fleet.CreateSite(context.Background(), enroll.Actor{Name: "test"}, devices.Site{Name: name, SSID: "s", Security: devices.SecurityWPA2PSK,
		Passphrase: "12345678", CIDR: netip.MustParsePrefix(cidr)})
	if err != nil {
		t.Fatal(err)
	}
}

// device registers one device and returns its serial and token.
func (f *fixture) device(t testing.TB, site string) (string, string) {
	t.Helper()
	serial, tok := enroll.NewSerial("M"), enroll.NewClaimToken()
	_, res, err := f.fleet.ImportBatch(context.Background(), enroll.Actor{Name: "test"}, enroll.BatchSpec{Model: "M", Site: site},
		[]enroll.ManifestRow{{Serial: serial, ClaimToken: tok}})
	if err != nil || res[0].Status != devices.RowCreated {
		t.Fatalf("import: %v %+v", err, res)
	}
	return serial, tok
}

func csr(t testing.TB) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

var src = netip.MustParseAddrPort("192.0.2.10:5000")

// A commit that fails after the certificate was signed leaves no device
// change, no lease and no audit event behind.
func TestFailureAfterSigningLeavesNothing(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "tiny", "10.0.0.0/30") // one leasable address
	s1, t1 := f.device(t, "tiny")
	s2, t2 := f.device(t, "tiny")
	if _, err := f.svc.Enroll(context.Background(), enroll.Request{Serial: s1, ClaimToken: t1, CSR: csr(t), Source: src}); err != nil {
		t.Fatal(err)
	}
	before, _ := f.store.Digest(context.Background())
	signed := f.signer.signed.Load()
	_, err := f.svc.Enroll(context.Background(), enroll.Request{Serial: s2, ClaimToken: t2, CSR: csr(t), Source: src})
	if !errors.Is(err, enroll.ErrPoolExhausted) {
		t.Fatalf("enroll into a full pool: %v, want ErrPoolExhausted", err)
	}
	if wait, ok := enroll.RetryAfter(err); !ok || wait <= 0 {
		t.Errorf("pool exhausted without a retry hint")
	}
	if f.signer.signed.Load() != signed+1 {
		t.Fatalf("the certificate was not signed before the commit failed (test does not test what it says)")
	}
	if after, _ := f.store.Digest(context.Background()); after != before {
		t.Error("the failed enrollment left something in the store")
	}
	d, _ := f.store.DeviceBySerial(context.Background(), s2)
	if d.State != devices.StateClaimed || d.Lease != nil || d.CertSerial != "" {
		t.Errorf("device after failed enrollment: %+v", d)
	}
}

func TestRetryWindow(t *testing.T) {
	f := newFixture(t, enroll.Config{RetryWindow: time.Minute})
	f.site(t, "hq", "10.0.0.0/24")
	serial, tok := f.device(t, "hq")
	req := enroll.Request{Serial: serial, ClaimToken: tok, CSR: csr(t), Source: src}
	first, err := f.svc.Enroll(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(30 * time.Second)
	again, err := f.svc.Enroll(context.Background(), req)
	if err != nil || again.Chain[0].SerialNumber.Cmp(first.Chain[0].SerialNumber) != 0 {
		t.Fatalf("retry inside the window: %v (cert %v vs %v)", err, again.Chain, first.Chain)
	}
	f.clock.Advance(time.Minute)
	if _, err := f.svc.Enroll(context.Background(), req); !errors.Is(err, enroll.ErrAlreadyProvisioned) {
		t.Errorf("retry after the window: %v, want ErrAlreadyProvisioned", err)
	}
	if f.signer.signed.Load() != 1 {
		t.Errorf("signed %d certificates, want 1", f.signer.signed.Load())
	}
}

func TestThrottleBlocksAndExpires(t *testing.T) {
	f := newFixture(t, enroll.Config{MaxFailures: 3, ThrottleBase: 10 * time.Second})
	f.site(t, "hq", "10.0.0.0/24")
	serial, tok := f.device(t, "hq")
	bad := enroll.Request{Serial: serial, ClaimToken: strings.Repeat("X", 32), CSR: csr(t), Source: src}
	for range 3 {
		if _, err := f.svc.Enroll(context.Background(), bad); !errors.Is(err, enroll.ErrUnauthorized) {
			t.Fatalf("wrong token: %v", err)
		}
	}
	good := enroll.Request{Serial: serial, ClaimToken: tok, CSR: csr(t), Source: src}
	_, err := f.svc.Enroll(context.Background(), good)
	wait, _ := enroll.RetryAfter(err)
	if !errors.Is(err, enroll.ErrThrottled) || wait <= 0 || wait > 10*time.Second {
		t.Fatalf("after 3 failures: %v (retry %v), want ErrThrottled within 10s", err, wait)
	}
	f.clock.Advance(11 * time.Second)
	if _, err := f.svc.Enroll(context.Background(), good); err != nil {
		t.Errorf("after the block: %v", err)
	}
}

func TestParseManifest(t *testing.T) {
	cases := []struct {
		name, in string
		rows     int
		err      string
	}{
		{"csv with tokens", "serial,model,claim_token\nA1,M,TOKENTOKENTOKEN123\nA2,M,TOKENTOKENTOKEN456\n", 2, ""},
		{"csv with hashes, BOM and CRLF", "\ufeffserial,claim_token_hash\r\nA1,sha256:" + strings.Repeat("ab", 32) + "\r\n", 1, ""},
		{"json lines", `{"serial":"A1","model":"M","claim_token":"TOKENTOKENTOKEN123"}` + "\n\n" + `{"serial":"A2","claim_token_hash":"` + strings.Repeat("cd", 32) + `"}`, 2, ""},
		{"empty", "  \n", 0, "empty"},
		{"unknown column", "serial,password\nA,B\n", 0, "unknown column"},
		{"no serial column", "model,claim_token\nM,T\n", 0, "no serial column"},
		{"ragged csv", "serial,model\nA\n", 0, "wrong number of fields"},
		{"bad json line", `{"serial":"A1"}` + "\n{nope}\n", 0, "line 2"},
		{"unknown json field", `{"serial":"A1","secret":"x"}`, 0, "unknown field"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rows, err := enroll.ParseManifest(strings.NewReader(c.in))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, enroll.ErrInvalid) {
					t.Fatalf("err %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil || len(rows) != c.rows {
				t.Fatalf("%d rows, %v; want %d rows", len(rows), err, c.rows)
			}
		})
	}
}

// TestManifestFormatsCarryTheSameFields: a CSV manifest reads every field a
// JSON-lines manifest does, the label's claim-code hash included.
func TestManifestFormatsCarryTheSameFields(t *testing.T) {
	tok, code := "sha256:"+strings.Repeat("ab", 32), "sha256:"+strings.Repeat("cd", 32)
	csvRows, err := enroll.ParseManifest(strings.NewReader("serial,model,claim_token_hash,claim_code_hash\nA1,M," + tok + "," + code + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	jsonRows, err := enroll.ParseManifest(strings.NewReader(`{"serial":"A1","model":"M","claim_token_hash":"` + tok + `","claim_code_hash":"` + code + `"}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(csvRows) != 1 || csvRows[0] != jsonRows[0] {
		t.Fatalf("CSV row %+v, JSON row %+v: want the same", csvRows, jsonRows)
	}
	if csvRows[0].ClaimCodeHash != code {
		t.Fatalf("claim_code_hash from CSV: %q", csvRows[0].ClaimCodeHash)
	}
}

func TestImportRowValidation(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	rows := []enroll.ManifestRow{
		{Serial: "GOOD-1", ClaimToken: "TOKENTOKENTOKEN123"},
		{Serial: "../evil", ClaimToken: "TOKENTOKENTOKEN123"},
		{Serial: "SHORT-TOKEN", ClaimToken: "abc"},
		{Serial: "BOTH", ClaimToken: "TOKENTOKENTOKEN123", ClaimTokenHash: "sha256:" + strings.Repeat("00", 32)},
		{Serial: "BAD-HASH", ClaimTokenHash: "sha256:xyz"},
		{Serial: "GOOD-2", ClaimTokenHash: strings.Repeat("0f", 32)},
	}
	b, res, err := f.fleet.ImportBatch(context.Background(), enroll.Actor{Name: "t"}, enroll.BatchSpec{Model: "M"}, rows)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"created", "rejected", "rejected", "rejected", "rejected", "created"}
	for i, r := range res {
		if r.Status != want[i] || (r.Status == "rejected" && r.Reason == "") {
			t.Errorf("row %d (%s): %+v, want %s with a reason", i+1, rows[i].Serial, r, want[i])
		}
	}
	if b.Count != 2 {
		t.Errorf("batch count %d, want 2", b.Count)
	}
}

// BenchmarkClaimCheck compares a wrong token for a known serial with an
// unknown serial: the two must cost the same (docs/performance.md).
func BenchmarkClaimCheck(b *testing.B) {
	f := newFixture(b, enroll.Config{MaxFailures: 1 << 30})
	f.site(b, "hq", "10.0.0.0/24")
	serial, _ := f.device(b, "hq")
	der := csr(b)
	for _, c := range []struct{ name, serial string }{{"wrong-token", serial}, {"unknown-serial", "NO-SUCH-SERIAL-1"}} {
		b.Run(c.name, func(b *testing.B) {
			req := enroll.Request{Serial: c.serial, ClaimToken: strings.Repeat("W", 32), CSR: der, Source: src}
			for b.Loop() {
				if _, err := f.svc.Enroll(context.Background(), req); !errors.Is(err, enroll.ErrUnauthorized) {
					b.Fatal(err)
				}
			}
		})
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add("serial,model,claim_token\nA1,M,TOKENTOKENTOKEN123\n")
	f.Add("serial,claim_token_hash\r\nA1,sha256:" + strings.Repeat("ab", 32) + "\r\n")
	f.Add(`{"serial":"A1","model":"M","claim_token":"TOKENTOKENTOKEN123"}` + "\n")
	f.Add("\ufeff\"serial\"\n\"a,b\"\n")
	f.Fuzz(func(t *testing.T, in string) {
		rows, err := enroll.ParseManifest(strings.NewReader(in))
		if err != nil {
			if !errors.Is(err, enroll.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(rows) > enroll.MaxBatchRows {
			t.Fatalf("%d rows", len(rows))
		}
	})
}

// blockingSigner is the real CA, holding every issuance until released: it
// keeps admission slots busy for as long as the test needs.
type blockingSigner struct {
	*pki.CA
	entered chan struct{}
	release chan struct{}
}

func (s *blockingSigner) IssueDevice(csr *x509.CertificateRequest, id profile.Device) (*x509.Certificate, error) {
	s.entered <- struct{}{}
	<-s.release
	return s.CA.IssueDevice(csr, id)
}

func TestAdmissionControl(t *testing.T) {
	f := newFixture(t, enroll.Config{})
	f.site(t, "hq", "10.0.0.0/24")
	bs := &blockingSigner{CA: f.ca, entered: make(chan struct{}, 3), release: make(chan struct{})}
	svc := enroll.New(enroll.Config{MaxInFlight: 2, OverloadRetry: time.Second}, enroll.Ports{Store: f.store, Signer: bs, Clock: f.clock}, quiet)
	reqs := make([]enroll.Request, 3)
	for i := range reqs {
		serial, tok := f.device(t, "hq")
		reqs[i] = enroll.Request{Serial: serial, ClaimToken: tok, CSR: csr(t), Source: src}
	}
	errs := make(chan error, 2)
	for _, r := range reqs[:2] {
		go func() { _, err := svc.Enroll(context.Background(), r); errs <- err }()
	}
	<-bs.entered
	<-bs.entered // both slots taken, both inside issuance
	before, _ := f.store.Digest(context.Background())
	_, err := svc.Enroll(context.Background(), reqs[2])
	wait, ok := enroll.RetryAfter(err)
	if !errors.Is(err, enroll.ErrOverloaded) || !ok || wait < time.Second || wait >= 2*time.Second {
		t.Fatalf("third enrollment: %v (retry %v), want ErrOverloaded with a 1-2s hint", err, wait)
	}
	if after, _ := f.store.Digest(context.Background()); after != before {
		t.Error("a refused enrollment wrote to the store")
	}
	close(bs.release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	go func() { <-bs.entered }()
	if _, err := svc.Enroll(context.Background(), reqs[2]); err != nil {
		t.Errorf("after the slots freed: %v", err)
	}
}
