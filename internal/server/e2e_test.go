package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnrollEndToEnd(t *testing.T) {
	env := servertest.Start(t)
	site := env.Site("hq", "10.20.0.0/24")
	for _, f := range []wire.Format{wire.CBOR, wire.JSON} {
		t.Run(f.String(), func(t *testing.T) {
			b := env.Mint(1, "hq")[0]
			d, err := simulator.NewDevice(b)
			if err != nil {
				t.Fatal(err)
			}
			res, err := d.Enroll(ctxT(t), simulator.EnrollOptions{Format: f}) // verifies the chain to the flashed root
			if err != nil {
				t.Fatalf("enroll: %v", err)
			}
			leaf := d.Chain[0]
			if got, want := leaf.Subject.CommonName, res.DeviceID; got != want {
				t.Errorf("certificate CN %q, want device ID %q", got, want)
			}
			if len(leaf.URIs) == 0 || leaf.URIs[0].String() != "urn:uuid:"+res.DeviceID {
				t.Errorf("certificate URIs %v, want urn:uuid:%s first", leaf.URIs, res.DeviceID)
			}
			if life := leaf.NotAfter.Sub(leaf.NotBefore); life < 89*24*time.Hour || life > 91*24*time.Hour {
				t.Errorf("certificate lifetime %v, want ~90 days", life)
			}
			if !bytes.Equal(res.CA, env.Server.CA().Root().Raw) {
				t.Error("response ca is not the root")
			}
			addr := netip.MustParseAddr(res.Network.Address)
			if !netip.MustParsePrefix(site.CIDR).Contains(addr) || res.Network.Address == site.Gateway || res.Lease.Address != res.Network.Address {
				t.Errorf("address %s / lease %s not a host of %s (gateway %s)", addr, res.Lease.Address, site.CIDR, site.Gateway)
			}
			want := wire.WiFi{SSID: "ssid-hq", Security: "wpa2-psk", Passphrase: "passphrase-hq"}
			if res.WiFi != want {
				t.Errorf("wifi %+v, want %+v", res.WiFi, want)
			}
			if res.Network.PrefixLen != 24 || res.Network.Gateway != "10.20.0.1" || strings.Join(res.Network.DNS, ",") != "192.0.2.53" ||
				strings.Join(res.Network.NTP, ",") != "ntp.example.net" || res.ConfigVersion != site.Version {
				t.Errorf("network %+v version %d does not match the site profile %+v", res.Network, res.ConfigVersion, site)
			}
			if time.Until(res.Lease.ExpiresAt) < 23*time.Hour {
				t.Errorf("lease expires %v, want ~24h ahead", res.Lease.ExpiresAt)
			}
			stored, err := env.Server.Store().DeviceBySerial(context.Background(), b.Serial)
			if err != nil {
				t.Fatal(err)
			}
			if stored.State != devices.StateProvisioned || stored.ID.String() != res.DeviceID ||
				!bytes.Equal(stored.CertDER, leaf.Raw) || stored.Lease == nil || stored.Lease.Addr != addr {
				t.Errorf("stored record %+v does not match the answer", stored)
			}
			opensslVerify(t, env, d.PEM())
		})
	}
	evs, err := env.Server.Store().Audit(context.Background(), devices.AuditQuery{Ascending: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ev := range evs {
		if ev.Action == "device.enroll" && ev.Source != "" && ev.Detail["transport"] == "coaps" && ev.Detail["cert_serial"] != "" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d device.enroll audit events with source, transport and cert serial, want 2", n)
	}
}

// opensslVerify checks the issued chain with the openssl CLI, as an operator would.
func opensslVerify(t *testing.T, env *servertest.Env, chainPEM []byte) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("openssl not installed in CI")
		}
		t.Log("openssl not installed: skipping openssl verify")
		return
	}
	dir := t.TempDir()
	blocks := strings.SplitAfter(string(chainPEM), "-----END CERTIFICATE-----\n")
	leaf, inter := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "inter.pem")
	os.WriteFile(leaf, []byte(blocks[0]), 0o600)
	os.WriteFile(inter, []byte(blocks[1]), 0o600)
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(env.DataDir, server.RootFile),
		"-untrusted", inter, "-purpose", "sslclient", leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
}

func TestRetryGetsSameAnswer(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	first, err := d.Enroll(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := env.Server.Store().Digest(context.Background())
	again, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}) // same key: the answer was "lost"
	if err != nil {
		t.Fatalf("retry with the same key: %v", err)
	}
	if again.DeviceID != first.DeviceID || !bytes.Equal(again.Certificate[0], first.Certificate[0]) ||
		again.Lease != first.Lease || again.Network.Address != first.Network.Address {
		t.Errorf("retry answer differs:\nfirst %+v\nagain %+v", first, again)
	}
	if after, _ := env.Server.Store().Digest(context.Background()); after != before {
		t.Error("a retry changed the store")
	}
	// The same token with another key is refused.
	other, _ := simulator.NewDevice(d.Bundle)
	_, err = other.Enroll(ctxT(t), simulator.EnrollOptions{})
	if simulator.Reason(err) != "token_used" {
		t.Errorf("same token, new key: got %v, want token_used", err)
	}
}

func TestConcurrentEnrollmentsNeverShareAnAddress(t *testing.T) {
	const n = 200
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/23")
	bundles := env.Mint(n, "hq")
	// Every device also sends a duplicate of its own request at the same time,
	// as a device that retries too eagerly would.
	outs, sum := simulator.Run(ctxT(t), append(bundles, bundles...), simulator.RunOptions{Concurrency: 100, Attempts: 3})
	if sum.Enrolled+sum.Failed != 2*n {
		t.Fatalf("summary %v", sum)
	}
	ok := map[string]bool{}
	for _, o := range outs {
		if o.Err == nil {
			ok[o.Serial] = true
		} else if r := simulator.Reason(o.Err); r != "token_used" {
			t.Errorf("%s: %v", o.Serial, o.Err)
		}
	}
	if len(ok) != n {
		t.Fatalf("%d devices enrolled, want %d", len(ok), n)
	}
	addrs := map[netip.Addr]string{}
	list, _, err := env.Server.Store().Devices(context.Background(), devices.Filter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list {
		if d.Lease == nil || d.State != devices.StateProvisioned {
			t.Fatalf("%s: state %s lease %v", d.Serial, d.State, d.Lease)
		}
		if prev, dup := addrs[d.Lease.Addr]; dup {
			t.Fatalf("address %s held by %s and %s", d.Lease.Addr, prev, d.Serial)
		}
		addrs[d.Lease.Addr] = d.Serial
	}
	if inUse, _ := env.Server.Store().LeasesInUse(context.Background(), "hq", time.Now()); inUse != n {
		t.Errorf("%d leases in use, want %d", inUse, n)
	}
}

func TestLeaseRenewalNeedsTheDeviceCertificate(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	res, err := d.Enroll(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	env.Clock.Advance(2 * time.Second) // expiry has one-second resolution
	renewed, err := d.RenewLease(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if renewed.Lease.Address != res.Lease.Address || !renewed.Lease.ExpiresAt.After(res.Lease.ExpiresAt) {
		t.Errorf("renewed lease %+v, first %+v: want same address, later expiry", renewed.Lease, res.Lease)
	}
	// Without a certificate on the session: 4.01.
	a := rawRequest(t, env, codes.POST, "/lease", message.AppCBOR, nil, nil)
	if a.Code != codes.Unauthorized || !strings.Contains(string(a.Body), "unauthorized") {
		t.Errorf("renew without certificate: %v %q", a.Code, a.Body)
	}
}

func TestSecondInstanceOnSameDataDirFails(t *testing.T) {
	env := servertest.Start(t)
	cfg := env.Config
	start := time.Now()
	_, err := server.Start(context.Background(), cfg, servertest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "in use by another provisiond") {
		t.Fatalf("second instance: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("second instance took %v to fail", time.Since(start))
	}
}

// answer is a CoAP response as a test sees it.
type answer struct {
	Code   codes.Code
	Body   []byte
	MaxAge uint32 // 0 when absent
	Format message.MediaType
}

// noFormat asks rawRequest to send no Content-Format option.
const noFormat message.MediaType = 0xFFFF

// rawRequest sends one CoAP request over DTLS (server-authenticated unless cfg says otherwise).
func rawRequest(t *testing.T, env *servertest.Env, code codes.Code, path string, cf message.MediaType, body []byte, cfg *piondtls.Config) answer {
	t.Helper()
	if cfg == nil {
		roots := x509.NewCertPool()
		roots.AddCert(env.Server.CA().Root())
		cfg = &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1", ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret}
	}
	conn, err := coapdtls.Dial(env.CoAPS(), cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	req, err := conn.NewPostRequest(ctxT(t), path, cf, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if cf == noFormat {
		req.Remove(message.ContentFormat)
	}
	req.SetCode(code)
	resp, err := conn.Do(req)
	if err != nil {
		t.Fatalf("%v %s: %v", code, path, err)
	}
	var a answer
	a.Code = resp.Code()
	if a.Body, err = resp.ReadBody(); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	a.MaxAge, _ = resp.GetOptionUint32(message.MaxAge)
	a.Format, _ = resp.ContentFormat()
	return a
}

func csrFor(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "someone-else"}, DNSNames: []string{"victim.example.com"},
		URIs: []*url.URL{{Scheme: "urn", Opaque: "uuid:00000000-0000-0000-0000-000000000001"}},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A device flashed with another CA's root must refuse this server, even
// after other devices verified (and cached) this server's chain.
func TestDeviceRefusesServerOfAnotherCA(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t)
	other := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	good, _ := simulator.NewDevice(bundles[0])
	if _, err := good.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	goodEST, _ := simulator.NewDevice(bundles[2])
	if _, err := goodEST.EnrollEST(ctxT(t), simulator.ESTOptions{}); err != nil {
		t.Fatal(err)
	}
	foreign := bundles[1]
	foreign.RootCA = other.Info.RootCA
	d, err := simulator.NewDevice(foreign)
	if err != nil {
		t.Fatal(err)
	}
	// Over EST too: the device's HTTPS check remembers verified chains as
	// its DTLS check does, and must not take this server's for its root's.
	if _, err := d.EnrollEST(ctxT(t), simulator.ESTOptions{}); err == nil || !strings.Contains(err.Error(), "server certificate: x509: certificate signed by unknown authority") {
		t.Fatalf("device trusting another root, over EST: %v, want the server's certificate refused", err)
	}
	// The handshake fails on the device's side, so no CoAP answer ever comes
	// back (how the failure surfaces, at dial or at the first write, varies).
	if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err == nil || simulator.Reason(err) != "transport" {
		t.Fatalf("device trusting another root: %v (reason %q), want a transport failure", err, simulator.Reason(err))
	}
	if got, _ := env.Server.Store().DeviceBySerial(context.Background(), foreign.Serial); got.State != "claimed" {
		t.Errorf("device state %s after a refused handshake, want claimed", got.State)
	}
}

// Every offered cipher suite works, including the CCM_8 suite that RFC 7252
// makes mandatory for certificate-based CoAP devices.
func TestCipherSuites(t *testing.T) {
	env := servertest.Start(t)
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	for _, cs := range []piondtls.CipherSuiteID{
		piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
		piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM,
		piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		piondtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		piondtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		piondtls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	} {
		t.Run(cs.String(), func(t *testing.T) {
			cfg := &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1", CipherSuites: []piondtls.CipherSuiteID{cs},
				ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret}
			a := rawRequest(t, env, codes.GET, "/ca", message.AppCBOR, nil, cfg)
			if a.Code != codes.Content || len(a.Body) == 0 {
				t.Errorf("GET /ca over %v: %v", cs, a.Code)
			}
		})
	}
}

// Plain CoAP exists only behind the explicit development flag.
func TestInsecureCoAP(t *testing.T) {
	cfg := server.Defaults()
	cfg.DataDir, cfg.CoAPAddr = t.TempDir(), "127.0.0.1:0"
	if _, err := server.Start(context.Background(), cfg, servertest.Logger(t)); err == nil || !strings.Contains(err.Error(), "--insecure-coap") {
		t.Fatalf("plain CoAP without the flag: %v", err)
	}
	env := servertest.Start(t, func(c *server.Config) { c.InsecureCoAP, c.CoAPAddr = true, "127.0.0.1:0" })
	env.Site("hq", "10.20.0.0/24")
	b := env.Mint(1, "hq")[0]
	conn, err := coapudp.Dial(env.Server.CoAPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body, _ := wire.Marshal(wire.JSON, wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csrFor(t, mustKey(t))})
	resp, err := conn.Post(ctxT(t), "/enroll", message.AppJSON, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := resp.ReadBody()
	var res wire.EnrollResponse
	if resp.Code() != codes.Created || wire.Unmarshal(wire.JSON, raw, &res) != nil || res.DeviceID == "" {
		t.Fatalf("plain CoAP enroll: %v %s", resp.Code(), raw)
	}
	evs, _ := env.Server.Store().Audit(context.Background(), devices.AuditQuery{Ascending: true, Limit: 100})
	if last := evs[len(evs)-1]; last.Action != "device.enroll" || last.Detail["transport"] != "coap" {
		t.Errorf("audit records transport %q, want coap", last.Detail["transport"])
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A bootstrap session holds one of the --max-handshakes slots from its
// ClientHello until its enrollment is answered, not until the device closes
// the session: a device that lingers must not block the next one.
func TestBootstrapSessionGivesBackItsHandshakeSlot(t *testing.T) {
	env := servertest.Start(t, func(c *server.Config) { c.MaxHandshakes = 1 })
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	conn, err := coapdtls.Dial(env.CoAPS(), &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1", ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	// go-coap's client handshakes on first use: a GET /ca completes it.
	if resp, err := conn.Get(ctxT(t), "/ca"); err != nil || resp.Code() != codes.Content {
		t.Fatalf("GET /ca: %v", err)
	}
	if n := env.Server.Handshakes().InProgress; n != 1 {
		t.Fatalf("slots in use on an open bootstrap session = %d, want 1", n)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	body, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: bundles[0].Serial, ClaimToken: bundles[0].ClaimToken, CSR: csr})
	resp, err := conn.Post(ctxT(t), "/enroll", message.AppCBOR, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code() != codes.Created {
		t.Fatalf("enroll: %v", resp.Code())
	}
	if n := env.Server.Handshakes().InProgress; n != 0 {
		t.Fatalf("slots in use after the answer, session still open = %d, want 0", n)
	}
	// With the one slot free, the next devices get in at once (well inside
	// the 5 s a held slot would make them wait).
	outs, sum := simulator.Run(ctxT(t), bundles[1:], simulator.RunOptions{Concurrency: 2, Attempts: 1, Timeout: 4 * time.Second})
	if sum.Enrolled != 2 {
		t.Fatalf("%v: %v", sum, outs[0].Err)
	}
	if h := env.Server.Handshakes(); h.Dropped != 0 {
		t.Fatalf("handshakes %+v, want none dropped", h)
	}
}
