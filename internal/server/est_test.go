package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/pki/profile"
	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// estClient runs GlobalSign's EST client (github.com/globalsign/est
// cmd/estclient v1.0.6, built into bin/ by make estclient) against env,
// trusting provisiond's root explicitly. Files it reads and writes live in
// dir.
type estClient struct {
	t    *testing.T
	bin  string
	env  *servertest.Env
	dir  string
	seq  int
	args []string // added to every command: credentials
}

func newESTClient(t *testing.T, env *servertest.Env) *estClient {
	c := &estClient{t: t, bin: testtools.Built(t, "estclient", "PROVISIOND_ESTCLIENT"), env: env, dir: t.TempDir()}
	root := c.file("root.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: env.Server.CA().Root().Raw}))
	c.args = []string{"-server", env.Server.HTTPAddr().String(), "-explicit", root}
	return c
}

// with returns a client that adds args (credentials) to every command.
func (c *estClient) with(args ...string) *estClient {
	d := *c
	d.args = append(slices.Clone(c.args), args...)
	return &d
}

func (c *estClient) file(name string, data []byte) string {
	c.seq++
	p := filepath.Join(c.dir, fmt.Sprintf("%d-%s", c.seq, name))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// run runs one estclient command and returns what it wrote to -out.
func (c *estClient) run(cmd string, args ...string) ([]byte, error) {
	c.t.Helper()
	out := filepath.Join(c.dir, fmt.Sprintf("out-%d", c.seq))
	c.seq++
	full := []string{cmd, "-timeout", "20s"}
	if cmd != "csrattrs" { // it writes to stdout only
		full = append(full, "-out", out)
	}
	full = append(append(full, c.args...), args...)
	msg, err := exec.Command(c.bin, full...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("estclient %s: %w: %s", cmd, err, msg)
	}
	if cmd == "csrattrs" {
		return msg, nil
	}
	return os.ReadFile(out)
}

// enroll runs enroll (or reenroll) with a CSR for key and returns the certificate.
func (c *estClient) enroll(cmd string, key *ecdsa.PrivateKey, tmpl *x509.CertificateRequest) (*x509.Certificate, error) {
	c.t.Helper()
	csr := newCSR(c.t, key, tmpl)
	out, err := c.run(cmd, "-csr", c.file("csr.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr.Raw})))
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(out)
	if blk == nil {
		return nil, fmt.Errorf("estclient %s wrote no PEM certificate: %q", cmd, out)
	}
	return x509.ParseCertificate(blk.Bytes)
}

// tlsIdentity is the -certs/-key pair of a client certificate.
func (c *estClient) tlsIdentity(certs []*x509.Certificate, key *ecdsa.PrivateKey) *estClient {
	var chain []byte
	for _, x := range certs {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})...)
	}
	return c.with("-certs", c.file("certs.pem", chain), "-key", c.file("key.pem", mfr.KeyPEM(key)))
}

func newCSR(t testing.TB, key *ecdsa.PrivateKey, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// mintIDevID registers a throwaway manufacturer CA for model TEST and
// mints n devices with factory certificates from it.
func mintIDevID(t *testing.T, env *servertest.Env, n int, site string) (*mfr.CA, []wire.Bundle) {
	t.Helper()
	ctx := context.Background()
	m, err := env.Client.Mint(ctx, "TEST", n, site)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := mfr.New("Test Manufacturer")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RegisterIDevIDs(ctx, &m, ca); err != nil {
		t.Fatal(err)
	}
	return ca, m.Bundles
}

func idevidOf(t testing.TB, b wire.Bundle) ([]*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	cert, err := tls.X509KeyPair([]byte(b.IDevID), []byte(b.IDevIDKey))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	return []*x509.Certificate{leaf}, cert.PrivateKey.(*ecdsa.PrivateKey)
}

// A stock EST client enrolls over HTTPS: CA certificates, CSR attributes,
// enrollment with HTTP Basic (serial, claim token) and with a factory
// certificate, re-enrollment with the certificate it got; then the device
// reads its config over its new mutual-TLS identity.
func TestESTInterop(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.40.0.0/24")
	ctx := ctxT(t)
	cl := newESTClient(t, env)

	out, err := cl.run("cacerts")
	if err != nil {
		t.Fatal(err)
	}
	var cas []*x509.Certificate
	for blk, rest := pem.Decode(out); blk != nil; blk, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		cas = append(cas, c)
	}
	foundRoot := false
	for _, c := range cas {
		foundRoot = foundRoot || c.Equal(env.Server.CA().Root())
	}
	if len(cas) != 2 || !foundRoot {
		t.Fatalf("cacerts: %d certificates, root among them: %v", len(cas), foundRoot)
	}
	out, err = cl.run("csrattrs")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "1.2.840.10045.4.3.2") || !strings.Contains(string(out), "1.2.840.10045.3.1.7") {
		t.Errorf("csrattrs: %s", out)
	}

	// HTTP Basic: serial and claim token. The CSR's names are ignored.
	b := env.Mint(1, "hq")[0]
	key := newKey(t)
	cert, err := cl.with("-user", b.Serial, "-pass", b.ClaimToken).enroll("enroll", key,
		&x509.CertificateRequest{Subject: pkix.Name{CommonName: "evil"}, DNSNames: []string{"provisiond.example.net"}})
	if err != nil {
		t.Fatalf("enroll with Basic: %v", err)
	}
	id, certSerial, err := profile.Identify(cert)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.DNSNames) != 0 || cert.Subject.CommonName == "evil" {
		t.Errorf("the CSR's names reached the certificate: %v %q", cert.DNSNames, cert.Subject.CommonName)
	}
	d, err := env.Server.Store().Device(ctx, id)
	if err != nil || d.Serial != b.Serial || d.CertSerial != certSerial || d.State != devices.StateProvisioned || d.Lease == nil {
		t.Fatalf("device after EST enrollment: %+v %v", d, err)
	}

	// Its config over mutual TLS.
	cfg := deviceConfig(t, env, cert, key)
	if cfg.DeviceID != id.String() || cfg.WiFi.SSID != "ssid-hq" || cfg.Lease.Address != d.Lease.Addr.String() {
		t.Errorf("device config over HTTPS: %+v", cfg)
	}

	// Re-enrollment with the certificate it holds, for the same key: the
	// client builds the CSR from the certificate itself.
	withCert := cl.tlsIdentity([]*x509.Certificate{cert, env.Server.CA().Intermediate()}, key)
	out, err = withCert.run("reenroll")
	if err != nil {
		t.Fatalf("reenroll: %v", err)
	}
	blk, _ := pem.Decode(out)
	if blk == nil {
		t.Fatalf("reenroll wrote %q", out)
	}
	cert2, _ := x509.ParseCertificate(blk.Bytes)
	id2, serial2, _ := profile.Identify(cert2)
	d, _ = env.Server.Store().Device(ctx, id)
	if id2 != id || d.CertSerial != serial2 || d.PrevCertSerial != certSerial || serial2 == certSerial {
		t.Fatalf("after reenroll: id %s→%s, device cert %s prev %s (old %s new %s)", id, id2, d.CertSerial, d.PrevCertSerial, certSerial, serial2)
	}

	// A factory certificate (IDevID) in place of a claim token, on the
	// label path segment too.
	_, idb := mintIDevID(t, env, 2, "hq")
	for i, aps := range []string{"", "plant-3"} {
		chain, idKey := idevidOf(t, idb[i])
		fc := cl.tlsIdentity(chain, idKey)
		if aps != "" {
			fc = fc.with("-aps", aps)
		}
		opKey := newKey(t)
		cert3, err := fc.enroll("enroll", opKey, nil)
		if err != nil {
			t.Fatalf("enroll with an IDevID (label %q): %v", aps, err)
		}
		id3, _, _ := profile.Identify(cert3)
		d3, err := env.Server.Store().Device(ctx, id3)
		if err != nil || d3.Serial != idb[i].Serial || d3.FactoryCA == "" {
			t.Fatalf("device enrolled with an IDevID: %+v %v", d3, err)
		}
		if cfg := deviceConfig(t, env, cert3, opKey); cfg.DeviceID != id3.String() {
			t.Errorf("config of the IDevID-enrolled device: %+v", cfg)
		}
	}

	// A device not claimed yet: accepted, to retry later (the status and
	// Retry-After are checked in TestESTAnswers; the client reports only the
	// message).
	nb := env.Mint(1, "")[0]
	_, err = cl.with("-user", nb.Serial, "-pass", nb.ClaimToken).enroll("enroll", newKey(t), nil)
	if err == nil || !strings.Contains(err.Error(), "not claimed for a site yet") {
		t.Fatalf("unclaimed device: %v, want the 202 answer's message", err)
	}
}

// deviceConfig reads GET /device/v1/config with a device certificate.
func deviceConfig(t *testing.T, env *servertest.Env, cert *x509.Certificate, key *ecdsa.PrivateKey) wire.DeviceConfig {
	t.Helper()
	resp, err := deviceHTTP(env, cert, key).Get(fmt.Sprintf("https://%s/device/v1/config", env.Server.HTTPAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg wire.DeviceConfig
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&cfg) != nil {
		t.Fatalf("GET /device/v1/config: %s", resp.Status)
	}
	return cfg
}

func deviceHTTP(env *servertest.Env, cert *x509.Certificate, key *ecdsa.PrivateKey) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	tc := &tls.Config{RootCAs: roots}
	if cert != nil {
		tc.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw, env.Server.CA().Intermediate().Raw}, PrivateKey: key, Leaf: cert}}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
}

// estPost posts body to an EST operation with the given client and headers.
func estPost(t *testing.T, env *servertest.Env, hc *http.Client, op string, body []byte, hdr map[string]string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", fmt.Sprintf("https://%s/.well-known/est/%s", env.Server.HTTPAddr(), op), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/pkcs10")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func b64CSR(t *testing.T, key *ecdsa.PrivateKey) []byte {
	return []byte(base64.StdEncoding.EncodeToString(newCSR(t, key, nil).Raw))
}

func basicAuth(user, pass string) map[string]string {
	return map[string]string{"Authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))}
}

func selfSigned(t *testing.T, serial string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: serial, SerialNumber: serial},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// Every refusal gets the status RFC 7030 calls for, with a message, and
// writes nothing; a success is base64 PKCS#7 with Content-Transfer-Encoding.
func TestESTAnswers(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.41.0.0/24")
	ctx := ctxT(t)
	anon := deviceHTTP(env, nil, nil)
	bundles := env.Mint(4, "hq")
	good, throttled, enrolled, revoked := bundles[0], bundles[1], bundles[2], bundles[3]
	unclaimed := env.Mint(1, "")[0]

	// One device enrolled over EST, for the re-enrollment cases.
	devKey := newKey(t)
	resp := estPost(t, env, anon, "simpleenroll", b64CSR(t, devKey), basicAuth(enrolled.Serial, enrolled.ClaimToken))
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Transfer-Encoding") != "base64" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/pkcs7-mime") || !strings.Contains(resp.Header.Get("Content-Type"), "certs-only") {
		t.Fatalf("simpleenroll: %s %v %s", resp.Status, resp.Header, raw)
	}
	der, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(string(raw), "\r\n", ""))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := est.ParseCertsOnly(der)
	if err != nil || len(certs) != 1 {
		t.Fatalf("simpleenroll answer: %d certificates, %v", len(certs), err)
	}
	devCert := certs[0]
	withDev := deviceHTTP(env, devCert, devKey)

	// Its lease renewed over mutual TLS: the inventory's expiry moves.
	d0, _ := env.Server.Store().DeviceBySerial(ctx, enrolled.Serial)
	env.Clock.Advance(time.Hour)
	lr, err := withDev.Post(fmt.Sprintf("https://%s/device/v1/lease", env.Server.HTTPAddr()), "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var lcfg wire.DeviceConfig
	if err := json.NewDecoder(lr.Body).Decode(&lcfg); err != nil || lr.StatusCode != 200 {
		t.Fatalf("POST /device/v1/lease: %s %v", lr.Status, err)
	}
	lr.Body.Close()
	if d1, _ := env.Server.Store().DeviceBySerial(ctx, enrolled.Serial); !d1.Lease.Expires.After(d0.Lease.Expires) || lcfg.Lease.Address != d1.Lease.Addr.String() {
		t.Errorf("lease after renewal over HTTPS: %v (was %v), answered %+v", d1.Lease.Expires, d0.Lease.Expires, lcfg.Lease)
	}

	// One enrolled over EST, then revoked.
	revKey := newKey(t)
	resp = estPost(t, env, anon, "simpleenroll", b64CSR(t, revKey), basicAuth(revoked.Serial, revoked.ClaimToken))
	raw, _ = io.ReadAll(resp.Body)
	der, _ = base64.StdEncoding.DecodeString(strings.ReplaceAll(string(raw), "\r\n", ""))
	revCerts, err := est.ParseCertsOnly(der)
	if err != nil {
		t.Fatalf("enroll the device to revoke: %s %v", resp.Status, err)
	}
	if err := env.Client.Do(ctx, "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{revoked.Serial}, Reason: "test"}, nil); err != nil {
		t.Fatal(err)
	}
	withRevoked := deviceHTTP(env, revCerts[0], revKey)
	p7, _ := est.CertsOnly(revCerts)

	// Manufacturer CAs: one registered then removed, one never registered.
	removedCA, idb := mintIDevID(t, env, 1, "hq")
	cas, _ := env.Client.FactoryCAs(ctx)
	for _, ca := range cas {
		if ca.Subject == removedCA.Cert.Subject.String() {
			if _, err := env.Client.RemoveFactoryCA(ctx, ca.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	removedChain, removedKey := idevidOf(t, idb[0])
	stranger, err := mfr.New("Stranger Inc")
	if err != nil {
		t.Fatal(err)
	}
	strangerID, err := stranger.Issue(good.Serial, mfr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	selfCert, selfKey := selfSigned(t, good.Serial)
	tlsClient := func(c *x509.Certificate, k *ecdsa.PrivateKey) *http.Client {
		roots := x509.NewCertPool()
		roots.AddCert(env.Server.CA().Root())
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots,
			Certificates: []tls.Certificate{{Certificate: [][]byte{c.Raw}, PrivateKey: k}}}}}
	}

	before, err := env.Server.Store().Digest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	big := append([]byte("MII"), bytes.Repeat([]byte("A"), 20<<10)...)
	for _, c := range []struct {
		name   string
		hc     *http.Client
		op     string
		body   []byte
		hdr    map[string]string
		status int
		retry  bool
		header string // a header the answer must carry
	}{
		{"no credentials", anon, "simpleenroll", b64CSR(t, newKey(t)), nil, 401, false, "WWW-Authenticate"},
		{"wrong Basic password", anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth(good.Serial, "WRONGWRONGWRONGWRONG"), 401, false, "WWW-Authenticate"},
		{"unknown serial", anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth("NOPE-1", good.ClaimToken), 401, false, ""},
		{"not claimed yet", anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth(unclaimed.Serial, unclaimed.ClaimToken), 202, true, ""},
		{"IDevID from an unregistered CA", tlsClient(strangerID.Cert, strangerID.Key), "simpleenroll", b64CSR(t, newKey(t)), nil, 401, false, ""},
		{"IDevID under a removed CA", tlsClient(removedChain[0], removedKey), "simpleenroll", b64CSR(t, newKey(t)), nil, 401, false, ""},
		{"self-signed certificate", tlsClient(selfCert, selfKey), "simpleenroll", b64CSR(t, newKey(t)), nil, 401, false, ""},
		{"reenroll without a certificate", anon, "simplereenroll", b64CSR(t, newKey(t)), basicAuth(good.Serial, good.ClaimToken), 401, false, ""},
		{"reenroll with another key", withDev, "simplereenroll", b64CSR(t, newKey(t)), nil, 403, false, ""},
		{"reenroll with a factory certificate", tlsClient(selfCert, selfKey), "simplereenroll", b64CSR(t, selfKey), nil, 401, false, ""},
		{"oversized body", anon, "simpleenroll", big, basicAuth(good.Serial, good.ClaimToken), 413, false, ""},
		{"not base64", anon, "simpleenroll", []byte("%%% not base64 %%%"), basicAuth(good.Serial, good.ClaimToken), 400, false, ""},
		{"base64 garbage", anon, "simpleenroll", []byte(base64.StdEncoding.EncodeToString([]byte("garbage, not DER"))), basicAuth(good.Serial, good.ClaimToken), 400, false, ""},
		{"a certificate, not a CSR", anon, "simpleenroll", []byte(base64.StdEncoding.EncodeToString(devCert.Raw)), basicAuth(good.Serial, good.ClaimToken), 400, false, ""},
		{"empty body", anon, "simpleenroll", nil, basicAuth(good.Serial, good.ClaimToken), 400, false, ""},
		{"a PKCS#7, not a CSR", anon, "simpleenroll", []byte(base64.StdEncoding.EncodeToString(p7)), basicAuth(good.Serial, good.ClaimToken), 400, false, ""},
		{"revoked device, Basic", anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth(revoked.Serial, revoked.ClaimToken), 403, false, ""},
		{"revoked device, its certificate", withRevoked, "simplereenroll", b64CSR(t, revKey), nil, 403, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp := estPost(t, env, c.hc, c.op, c.body, c.hdr)
			msg, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.status || len(bytes.TrimSpace(msg)) == 0 {
				t.Fatalf("%s: %q, want %d with a message", resp.Status, msg, c.status)
			}
			if c.retry && resp.Header.Get("Retry-After") == "" {
				t.Errorf("no Retry-After")
			}
			if c.header != "" && resp.Header.Get(c.header) == "" {
				t.Errorf("no %s", c.header)
			}
		})
	}
	// Wrong passwords are throttled like claim tokens: 429 with Retry-After.
	var last *http.Response
	for range 6 {
		last = estPost(t, env, anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth(throttled.Serial, "WRONGWRONGWRONGWRONG"))
	}
	if last.StatusCode != 429 || last.Header.Get("Retry-After") == "" {
		t.Errorf("after 6 wrong passwords: %s Retry-After %q, want 429 with Retry-After", last.Status, last.Header.Get("Retry-After"))
	}
	if resp := estPost(t, env, anon, "simpleenroll", b64CSR(t, newKey(t)), basicAuth(throttled.Serial, throttled.ClaimToken)); resp.StatusCode != 429 {
		t.Errorf("the right password while throttled: %s, want 429", resp.Status)
	}
	if after, _ := env.Server.Store().Digest(ctx); after != before {
		t.Error("a refused EST request changed the inventory")
	}
	// Wrong method, unknown operation.
	r, err := anon.Get(fmt.Sprintf("https://%s/.well-known/est/simpleenroll", env.Server.HTTPAddr()))
	if err != nil || r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET simpleenroll: %v %v", r.Status, err)
	}
	r, err = anon.Get(fmt.Sprintf("https://%s/device/v1/config", env.Server.HTTPAddr()))
	if err != nil || r.StatusCode != http.StatusUnauthorized {
		t.Errorf("device config without a certificate: %v %v", r.Status, err)
	}
}

// The curl + openssl exchange of docs/protocol.md (docs/est/curl-enroll.sh)
// works as written: enrollment with serial and claim token, the config over
// mutual TLS, re-enrollment; and an unclaimed device gets 202 (exit 75).
func TestESTWithCurl(t *testing.T) {
	testtools.Need(t, "curl")
	testtools.Need(t, "openssl")
	env := servertest.Start(t)
	env.Site("hq", "10.42.0.0/24")
	script, err := filepath.Abs(filepath.Join("..", "..", "docs", "est", "curl-enroll.sh"))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "root.pem")
	os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: env.Server.CA().Root().Raw}), 0o600)
	run := func(b wire.Bundle) (string, string, error) {
		dir := t.TempDir()
		cmd := exec.Command("sh", script, dir)
		cmd.Env = append(os.Environ(), "SERVER="+env.Server.HTTPAddr().String(), "ROOT="+root, "SERIAL="+b.Serial, "TOKEN="+b.ClaimToken)
		out, err := cmd.CombinedOutput()
		return dir, string(out), err
	}
	b := env.Mint(1, "hq")[0]
	dir, out, err := run(b)
	if err != nil {
		t.Fatalf("curl-enroll.sh: %v\n%s", err, out)
	}
	var cfg wire.DeviceConfig
	raw, _ := os.ReadFile(filepath.Join(dir, "config.json"))
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.WiFi.SSID != "ssid-hq" || cfg.Lease.Address == "" {
		t.Fatalf("config.json: %v %s", err, raw)
	}
	first, renewed := readPEMCert(t, filepath.Join(dir, "device.pem")), readPEMCert(t, filepath.Join(dir, "renewed.pem"))
	id, _, _ := profile.Identify(first)
	id2, serial2, _ := profile.Identify(renewed)
	d, _ := env.Server.Store().DeviceBySerial(ctxT(t), b.Serial)
	if id != d.ID || id2 != d.ID || d.CertSerial != serial2 || first.SerialNumber.Cmp(renewed.SerialNumber) == 0 {
		t.Fatalf("device %+v after curl enrollment and re-enrollment", d)
	}

	_, out, err = run(env.Mint(1, "")[0])
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 75 || !strings.Contains(strings.ToLower(out), "retry-after: 300") {
		t.Fatalf("unclaimed device: %v\n%s", err, out)
	}
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(raw)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The HTTPS certificate request names provisiond's CA and the registered
// manufacturer CAs, and no others: a browser offers an operator none of
// its unrelated certificates, and a Go client picks its IDevID. A CA added
// or removed here is named, or not, at the next handshake.
func TestHTTPSCertificateRequestNamesTheCAs(t *testing.T) {
	env := servertest.Start(t)
	ctx := ctxT(t)
	names := func() []string {
		t.Helper()
		var got []string
		roots := x509.NewCertPool()
		roots.AddCert(env.Server.CA().Root())
		conn, err := tls.Dial("tcp", env.Server.HTTPAddr().String(), &tls.Config{RootCAs: roots,
			GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				for _, raw := range cri.AcceptableCAs {
					var n pkix.RDNSequence
					if _, err := asn1.Unmarshal(raw, &n); err == nil {
						var name pkix.Name
						name.FillFromRDNSequence(&n)
						got = append(got, name.CommonName)
					}
				}
				return &tls.Certificate{}, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		return got
	}
	acme, err := mfr.New("Acme Factory Root")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(); slices.Contains(got, "Acme Factory Root") || len(got) == 0 {
		t.Fatalf("before registration: %v", got)
	}
	reg, err := env.Client.AddFactoryCA(ctx, httpapi.FactoryCARequest{Certificate: string(acme.CertPEM()), Model: "TEST"})
	if err != nil {
		t.Fatal(err)
	}
	if got := names(); !slices.Contains(got, "Acme Factory Root") || !slices.Contains(got, env.Server.CA().Root().Subject.CommonName) {
		t.Fatalf("after registration: %v", got)
	}
	if _, err := env.Client.RemoveFactoryCA(ctx, reg.ID); err != nil {
		t.Fatal(err)
	}
	if got := names(); slices.Contains(got, "Acme Factory Root") {
		t.Fatalf("after removal: %v", got)
	}
}

// The HTTPS listener's handshake gate: a session holds its slot from its
// handshake to its first answer, so with one slot a second client waits and
// is dropped while the first has not asked anything, and gets in once the
// first was answered.
func TestHTTPSHandshakeGate(t *testing.T) {
	env := servertest.Start(t, func(c *server.Config) { c.MaxHandshakes, c.HandshakeWait = 1, 300*time.Millisecond })
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	dial := func() (*tls.Conn, error) {
		return tls.Dial("tcp", env.Server.HTTPAddr().String(), &tls.Config{RootCAs: roots, NextProtos: []string{"http/1.1"}})
	}
	first, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("a second handshake got through while the first session held the only slot")
	}
	if _, err := io.WriteString(first, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(first), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first session's request: %v %v", resp, err)
	}
	resp.Body.Close()
	third, err := dial()
	if err != nil {
		t.Fatalf("after the first session's answer: %v", err)
	}
	third.Close()
}
