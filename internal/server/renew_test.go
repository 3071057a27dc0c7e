package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestCertificateRenewal(t *testing.T) {
	const grace = 2 * time.Second
	env := servertest.Start(t, func(c *server.Config) { c.Enroll.RetryWindow = grace })
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(2, "hq")
	d, _ := simulator.NewDevice(bundles[0])
	if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	oldCert, _ := d.TLSCertificate()
	oldSerial := fmt.Sprintf("%x", d.Chain[0].SerialNumber)

	// A renewal whose answer is "lost": sent twice with the same CSR on the old certificate.
	csr := csrFor(t, mustKey(t))
	body, _ := wire.Marshal(wire.CBOR, wire.RenewRequest{CSR: csr})
	var first, again wire.RenewResponse
	for i, out := range []*wire.RenewResponse{&first, &again} {
		a := mutualRequest(t, env, oldCert, "/renew", body)
		if a.Code != codes.Changed || wire.Unmarshal(wire.CBOR, a.Body, out) != nil {
			t.Fatalf("renewal %d: %v %q", i+1, a.Code, a.Body)
		}
	}
	if !bytes.Equal(first.Certificate[0], again.Certificate[0]) {
		t.Error("retrying a renewal with the same key issued another certificate")
	}
	leaf, _ := x509.ParseCertificate(first.Certificate[0])
	if leaf.Subject.CommonName != d.Enrollment.DeviceID || fmt.Sprintf("%x", leaf.SerialNumber) == oldSerial {
		t.Fatalf("renewed certificate: CN %s serial %x", leaf.Subject.CommonName, leaf.SerialNumber)
	}
	// Another key on the old certificate inside the window: refused.
	other, _ := wire.Marshal(wire.CBOR, wire.RenewRequest{CSR: csrFor(t, mustKey(t))})
	if a := mutualRequest(t, env, oldCert, "/renew", other); a.Code != codes.Forbidden {
		t.Errorf("second renewal of a renewed certificate with another key: %v", a.Code)
	}

	// The simulator's own path: renew, then use the new certificate.
	d2, _ := simulator.NewDevice(bundles[1])
	if _, err := d2.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
		t.Fatal(err)
	}
	before := d2.Chain[0].SerialNumber
	s, err := d2.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RenewCertificate(ctxT(t)); err != nil {
		t.Fatalf("renew over MQTT: %v", err)
	}
	s.Close()
	if d2.Chain[0].SerialNumber.Cmp(before) == 0 {
		t.Fatal("MQTT renewal kept the old certificate")
	}
	s2, err := d2.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatalf("connect with the renewed certificate: %v", err)
	}
	s2.Close()
	if err := d2.Renew(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatalf("renew again over CoAP: %v", err)
	}
	if _, err := d2.RenewLease(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Errorf("lease with the twice-renewed certificate: %v", err)
	}

	// After the grace window the replaced certificate is on the CRL and no
	// longer opens a session.
	time.Sleep(grace + 200*time.Millisecond)
	crl, _ := x509.ParseRevocationList(env.Server.CRL())
	listed := false
	for _, e := range crl.RevokedCertificateEntries {
		listed = listed || fmt.Sprintf("%x", e.SerialNumber) == oldSerial
	}
	if !listed {
		t.Error("the replaced certificate is not on the CRL")
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	if conn, err := coapdtls.Dial(env.CoAPS(), &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{*oldCert}, ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret}); err == nil {
		ctx, cancel := ctxShort(2 * time.Second)
		_, err = conn.Post(ctx, "/lease", message.AppCBOR, bytes.NewReader(nil))
		cancel()
		conn.Close()
		if err == nil {
			t.Error("the replaced certificate still opens a session after the grace window")
		}
	}
}

// mutualRequest POSTs CBOR over a mutual-DTLS session with cert.
func mutualRequest(t *testing.T, env *servertest.Env, cert *tls.Certificate, path string, body []byte) answer {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	return rawRequest(t, env, codes.POST, path, message.AppCBOR, body, &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{*cert}, ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret})
}
