package simulator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/transport/wire"
)

// renewalCSR makes a new key and its CSR, as a device does before its
// certificate expires.
func (d *Device) renewalCSR() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.Bundle.Serial}}, key)
	return key, csr, err
}

// install checks a renewal answer against the new key and switches to it.
func (d *Device) install(key crypto.Signer, r *wire.RenewResponse) error {
	chain, err := d.verifyFor(key, wire.EnrollResponse{Certificate: r.Certificate, CA: r.CA})
	if err != nil {
		return err
	}
	d.Key, d.Chain = key, chain
	return nil
}

// Renew gets a new certificate for a new key over mutual DTLS (POST /renew),
// authenticating with the current one.
func (d *Device) Renew(ctx context.Context, o EnrollOptions) error {
	key, csr, err := d.renewalCSR()
	if err != nil {
		return err
	}
	cert, err := d.TLSCertificate()
	if err != nil {
		return err
	}
	body, err := wire.Marshal(wire.CBOR, wire.RenewRequest{CSR: csr})
	if err != nil {
		return err
	}
	o.Format = wire.CBOR
	var out wire.RenewResponse
	if err := d.post(ctx, o, cert, "/renew", body, codes.Changed, &out); err != nil {
		return err
	}
	return d.install(key, &out)
}

// RenewCertificate renews the device's certificate over its MQTT session.
// The session stays on the old certificate; reconnect to use the new one.
func (s *Session) RenewCertificate(ctx context.Context) error {
	key, csr, err := s.d.renewalCSR()
	if err != nil {
		return err
	}
	body, err := wire.Marshal(wire.JSON, wire.RenewRequest{CSR: csr})
	if err != nil {
		return err
	}
	id := s.d.Enrollment.DeviceID
	replies := make(chan []byte, 1)
	if err := subscribe(ctx, s.c, topics.Certificate(id), func(_ paho.Client, m paho.Message) {
		select {
		case replies <- m.Payload():
		default:
		}
	}); err != nil {
		return err
	}
	if err := wait(ctx, s.c.Publish(topics.RenewCert(id, wire.JSON), 1, false, body)); err != nil {
		return err
	}
	select {
	case raw := <-replies:
		var r wire.Reply
		if err := wire.Unmarshal(wire.JSON, raw, &r); err != nil {
			return err
		}
		if err := replyError(r, "2.04"); err != nil {
			return err
		}
		if r.Renewal == nil {
			return errors.New("reply carries no renewal")
		}
		return s.d.install(key, r.Renewal)
	case <-ctx.Done():
		return fmt.Errorf("waiting for the renewal: %w", ctx.Err())
	}
}
