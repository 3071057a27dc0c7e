package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/pki/profile"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/wire"
)

// libcoap's coap-client enrolls over EST-coaps with a factory certificate,
// as docs/protocol.md says: discovery, CA certificates, CSR attributes,
// simpleenroll with a DER CSR (-t 286 -A 281), and the answer read by
// openssl.
func TestESTCoAPSLibcoap(t *testing.T) {
	coapClient := testtools.Need(t, "coap-client-openssl")
	openssl := testtools.Need(t, "openssl")
	env := servertest.Start(t)
	env.Site("lab", "192.168.60.0/24")
	_, bundles := mintIDevID(t, env, 1, "lab")
	b := bundles[0]
	dir := t.TempDir()
	run := func(name string, args ...string) []byte { t.Helper(); return runIn(t, dir, name, args...) }
	os.WriteFile(filepath.Join(dir, "idevid.pem"), []byte(b.IDevID), 0o600)
	os.WriteFile(filepath.Join(dir, "idevid.key"), []byte(b.IDevIDKey), 0o600)
	root := filepath.Join(env.DataDir, server.RootFile)
	url := "coaps://" + env.CoAPS()
	tlsArgs := []string{"-c", "idevid.pem", "-j", "idevid.key", "-R", root, "-B", "10"}

	core := run(coapClient, append([]string{"-m", "get"}, append(tlsArgs, url+"/.well-known/core")...)...)
	for _, rt := range []string{"ace.est.crts", "ace.est.sen", "ace.est.sren", "ace.est.att"} {
		if !strings.Contains(string(core), `rt="`+rt+`"`) {
			t.Errorf("/.well-known/core lacks %s: %s", rt, core)
		}
	}
	run(coapClient, append([]string{"-m", "get", "-A", "287", "-o", "root.der"}, append(tlsArgs, url+"/est/crts")...)...)
	if der, _ := os.ReadFile(filepath.Join(dir, "root.der")); !bytes.Equal(der, env.Server.CA().Root().Raw) {
		t.Errorf("crts with accept 287 is not the root certificate (%d bytes)", len(der))
	}
	// The certs-only bundle (about 1.1 KB) comes block-wise (Block2).
	run(coapClient, append([]string{"-m", "get", "-A", "281", "-o", "crts.p7"}, append(tlsArgs, url+"/.well-known/est/crts")...)...)
	if pems := run(openssl, "pkcs7", "-inform", "DER", "-in", "crts.p7", "-print_certs"); strings.Count(string(pems), "BEGIN CERTIFICATE") != 2 {
		t.Errorf("crts with accept 281: %s", pems)
	}
	run(coapClient, append([]string{"-m", "get", "-A", "285", "-o", "attrs.der"}, append(tlsArgs, url+"/.well-known/est/att")...)...)
	if der, _ := os.ReadFile(filepath.Join(dir, "attrs.der")); !bytes.Equal(der, est.CSRAttrs()) {
		t.Errorf("att: %x", der)
	}

	run(openssl, "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "key.pem")
	run(openssl, "req", "-new", "-key", "key.pem", "-subj", "/CN=anything", "-outform", "DER", "-out", "csr.der")
	run(coapClient, append([]string{"-m", "post", "-t", "286", "-A", "281", "-f", "csr.der", "-o", "cert.p7"}, append(tlsArgs, url+"/.well-known/est/sen")...)...)
	run(openssl, "pkcs7", "-inform", "DER", "-in", "cert.p7", "-print_certs", "-out", "leaf.pem")
	if a, b := run(openssl, "x509", "-in", "leaf.pem", "-noout", "-pubkey"), run(openssl, "pkey", "-in", "key.pem", "-pubout"); string(a) != string(b) {
		t.Fatal("the EST-coaps certificate is not for the CSR's key")
	}
	leaf := readPEMCert(t, filepath.Join(dir, "leaf.pem"))
	id, _, err := profile.Identify(leaf)
	if err != nil {
		t.Fatal(err)
	}
	d, err := env.Server.Store().Device(ctxT(t), id)
	if err != nil || d.Serial != b.Serial || d.State != devices.StateProvisioned || d.FactoryCA == "" {
		t.Fatalf("device after EST-coaps: %+v %v", d, err)
	}
	// Its config over mutual DTLS with the new certificate.
	out := run(coapClient, "-m", "get", "-A", "50", "-c", "leaf.pem", "-j", "key.pem", "-R", root, "-B", "10", url+"/config")
	var cfg wire.DeviceConfig
	if err := json.Unmarshal(out, &cfg); err != nil || cfg.DeviceID != id.String() || cfg.WiFi.SSID != "ssid-lab" {
		t.Fatalf("GET /config: %v %s", err, out)
	}
}

// estCoAPSConn opens a DTLS session with cert (nil: none).
func estCoAPSConn(t *testing.T, env *servertest.Env, cert *tls.Certificate) (*udpclient.Conn, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	cfg := &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1", ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return coapdtls.Dial(env.CoAPS(), cfg)
}

func tlsCert(certs []*x509.Certificate, key *ecdsa.PrivateKey) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, x := range certs {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// The same factory certificate works for the custom /enroll (no claim
// token), the simulator re-enrolls over /est/sren, and every refusal gets
// its code and writes nothing.
func TestESTCoAPSAnswers(t *testing.T) {
	env := servertest.Start(t)
	env.Site("lab", "192.168.61.0/24")
	ctx := ctxT(t)
	_, bundles := mintIDevID(t, env, 3, "lab")

	// EST-coaps through the simulator, then re-enrollment.
	d0, _ := simulator.NewDevice(bundles[0])
	cfg, err := d0.EnrollESTCoAPS(ctx, simulator.EnrollOptions{})
	if err != nil || cfg.WiFi.SSID != "ssid-lab" {
		t.Fatalf("EST-coaps enrollment: %v %+v", err, cfg)
	}

	// The custom /enroll with the IDevID in place of the claim token.
	d1, _ := simulator.NewDevice(bundles[1])
	fc, err := d1.FactoryIdentity()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := estCoAPSConn(t, env, fc)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := d1.CSR()
	body, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{CSR: csr})
	resp, err := conn.Post(ctx, "/enroll", message.AppCBOR, bytes.NewReader(body))
	if err != nil || resp.Code() != codes.Created {
		t.Fatalf("/enroll with an IDevID and no claim token: %v %v", err, resp)
	}
	conn.Close()

	// Refusals.
	devCert, _ := d0.TLSCertificate()
	stranger, _ := mfr.New("Stranger")
	sid, _ := stranger.Issue(bundles[2].Serial, mfr.Options{})
	selfCert, selfKey := selfSigned(t, bundles[2].Serial)
	unclaimedCA, unclaimed := mintIDevID(t, env, 1, "")
	_ = unclaimedCA
	du, _ := simulator.NewDevice(unclaimed[0])
	uc, _ := du.FactoryIdentity()
	d2, _ := simulator.NewDevice(bundles[2])
	fc2, _ := d2.FactoryIdentity()
	goodCSR, _ := d2.CSR()
	otherKey := newKey(t)
	otherCSR := newCSR(t, otherKey, nil).Raw

	before, _ := env.Server.Store().Digest(ctx)
	for _, c := range []struct {
		name     string
		cert     *tls.Certificate
		path     string
		cf       message.MediaType
		accept   int
		body     []byte
		want     codes.Code
		maxAge   bool
		noHandsh bool
	}{
		{"no client certificate", nil, "/est/sen", est.CFPKCS10, -1, goodCSR, codes.Unauthorized, false, false},
		{"unregistered manufacturer", tlsCert([]*x509.Certificate{sid.Cert}, sid.Key), "/est/sen", est.CFPKCS10, -1, goodCSR, 0, false, true},
		{"self-signed", tlsCert([]*x509.Certificate{selfCert}, selfKey), "/est/sen", est.CFPKCS10, -1, goodCSR, 0, false, true},
		{"not claimed yet", uc, "/est/sen", est.CFPKCS10, -1, goodCSR, codes.ServiceUnavailable, true, false},
		{"sren with another key", devCert, "/est/sren", est.CFPKCS10, -1, otherCSR, codes.Forbidden, false, false},
		{"sren with a factory certificate", fc2, "/est/sren", est.CFPKCS10, -1, goodCSR, codes.Unauthorized, false, false},
		{"not DER", fc2, "/est/sen", est.CFPKCS10, -1, []byte("garbage"), codes.BadRequest, false, false},
		{"wrong content-format", fc2, "/est/sen", message.AppJSON, -1, goodCSR, codes.UnsupportedMediaType, false, false},
		{"unacceptable answer format", fc2, "/est/sen", est.CFPKCS10, int(message.AppJSON), goodCSR, codes.NotAcceptable, false, false},
		{"oversized (Block1)", fc2, "/est/sen", est.CFPKCS10, -1, bytes.Repeat([]byte{0x30}, 20<<10), codes.RequestEntityTooLarge, false, false},
		{"GET on sen", fc2, "/est/sen", 0, -1, nil, codes.MethodNotAllowed, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn, err := estCoAPSConn(t, env, c.cert)
			if c.noHandsh {
				if err == nil {
					cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					_, err = conn.Get(cctx, "/est/crts")
					cancel()
					conn.Close()
				}
				if err == nil {
					t.Fatal("the handshake succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var opts message.Options
			if c.accept >= 0 {
				opts = append(opts, message.Option{ID: message.Accept, Value: []byte{byte(c.accept)}})
			}
			var resp interface {
				Code() codes.Code
				GetOptionUint32(message.OptionID) (uint32, error)
			}
			if c.cf == 0 {
				resp, err = conn.Get(ctx, c.path, opts...)
			} else {
				resp, err = conn.Post(ctx, c.path, c.cf, bytes.NewReader(c.body), opts...)
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.Code() != c.want {
				t.Fatalf("%v, want %v", resp.Code(), c.want)
			}
			if ma, err := resp.GetOptionUint32(message.MaxAge); c.maxAge && (err != nil || ma == 0) {
				t.Errorf("no Max-Age: %v", err)
			}
		})
	}
	if after, _ := env.Server.Store().Digest(ctx); after != before {
		t.Error("a refused EST-coaps request changed the inventory")
	}

	// Re-enrollment last: the certificate it supersedes goes on the CRL a
	// while later, which on etcd is a write to the store.
	first := d0.Chain[0]
	if err := d0.ReenrollESTCoAPS(ctx, simulator.EnrollOptions{}); err != nil {
		t.Fatalf("sren: %v", err)
	}
	if d0.Chain[0].SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("sren kept the certificate")
	}
	if _, err := d0.Config(ctx, simulator.EnrollOptions{}); err != nil {
		t.Fatalf("config with the re-enrolled certificate: %v", err)
	}
}

// The factory certificate authenticates the custom bootstrap over MQTT too
// (a boot- client ID, no claim token); after its CA is removed, the
// handshake with it fails.
func TestFactoryCertificateOverMQTT(t *testing.T) {
	env := servertest.Start(t)
	env.Site("lab", "192.168.62.0/24")
	ctx := ctxT(t)
	_, bundles := mintIDevID(t, env, 2, "lab")
	d0, _ := simulator.NewDevice(bundles[0])
	res, err := d0.EnrollMQTT(ctx, simulator.MQTTOptions{Factory: true})
	if err != nil {
		t.Fatalf("MQTT enrollment with an IDevID: %v", err)
	}
	dev, err := env.Server.Store().DeviceBySerial(ctx, bundles[0].Serial)
	if err != nil || dev.ID.String() != res.DeviceID || dev.FactoryCA == "" {
		t.Fatalf("device %+v %v", dev, err)
	}
	cas, _ := env.Client.FactoryCAs(ctx)
	for _, ca := range cas {
		if _, err := env.Client.RemoveFactoryCA(ctx, ca.ID); err != nil {
			t.Fatal(err)
		}
	}
	d1, _ := simulator.NewDevice(bundles[1])
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := d1.EnrollMQTT(sctx, simulator.MQTTOptions{Factory: true}); err == nil {
		t.Fatal("enrolled with an IDevID under a removed manufacturer CA")
	}
	if _, err := env.Server.Store().DeviceBySerial(ctx, bundles[1].Serial); err != nil {
		t.Fatal(err)
	} else if d, _ := env.Server.Store().DeviceBySerial(ctx, bundles[1].Serial); d.State != devices.StateClaimed {
		t.Errorf("refused device changed: %s", d.State)
	}
}
