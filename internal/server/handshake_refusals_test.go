package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
)

// Certificates that must not open a session, at the DTLS handshake and at
// MQTT CONNECT: one from a foreign CA naming a real device, a self-signed
// one, and one from our own CA for a device the inventory does not have.
// The device's real certificate is the control.
func TestForeignCertificatesRefused(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	id := uuid.MustParse(d.Enrollment.DeviceID)
	real, err := d.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}

	// A foreign CA that issues a certificate naming the real device.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "provisiond Root CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	leafFor := func(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, key *ecdsa.PrivateKey, id uuid.UUID) *tls.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id.String()},
			URIs:      []*url.URL{{Scheme: "urn", Opaque: "uuid:" + id.String()}},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ours, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cases := []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"the device's own certificate (control)", real, true},
		{"foreign CA naming the device", leafFor(caCert, caKey, key, id), false},
		{"self-signed naming the device", leafFor(nil, nil, key, id), false},
		{"our CA, a device not in the inventory", deviceCert(t, env.Server.CA(), ours, uuid.New()), false},
	}
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	for _, c := range cases {
		t.Run(c.name+"/dtls", func(t *testing.T) {
			conn, err := coapdtls.Dial(env.CoAPS(), &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1",
				Certificates: []tls.Certificate{*c.cert}, ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret})
			// An authenticated request: a lease renewal. A certificate that
			// fails verification either fails the handshake or (when pion's
			// client holds it back, its issuer not being one the server
			// asked for) leaves a bootstrap session, answered 4.01.
			renewed := false
			if err == nil {
				resp, rerr := conn.Post(ctxT(t), "/lease", message.AppCBOR, bytes.NewReader(nil))
				renewed = rerr == nil && resp.Code() == codes.Changed
				err = rerr
				if rerr == nil {
					t.Logf("POST /lease: %v", resp.Code())
				}
				conn.Close()
			}
			if renewed != c.ok {
				t.Errorf("authenticated as the device: %v, want %v (%v)", renewed, c.ok, err)
			}
		})
		t.Run(c.name+"/mqtt", func(t *testing.T) {
			_, err := mqttDial(t, env, id.String(), c.cert)
			if c.name == "our CA, a device not in the inventory" {
				_, err = mqttDial(t, env, c.cert.Leaf.URIs[0].Opaque[5:], c.cert)
			}
			if (err == nil) != c.ok {
				t.Errorf("CONNECT accepted: %v, want %v (%v)", err == nil, c.ok, err)
			}
		})
	}
}
