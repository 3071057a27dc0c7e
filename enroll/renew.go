package enroll

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/provisiond/provisiond/pki/profile"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// CertReplacer is the store operation a renewal commits.
type CertReplacer interface {
	ReplaceCertificate(ctx context.Context, id uuid.UUID, fromSerial string, apply func(d *devices.Device), now time.Time, ev devices.AuditEvent) (devices.Device, error)
}

// Renew issues a device a new certificate for a new CSR. The device
// authenticated with the certificate whose serial is presented (mutual DTLS
// or TLS). Its identity stays the same; the key may change. The replaced
// certificate is recorded as superseded, and for the retry window it still
// opens a session, so that a device that lost the answer can ask again: the
// same request (same key) then gets the same certificate.
func (s *Service) Renew(ctx context.Context, id uuid.UUID, presented string, csrDER []byte, source netip.AddrPort, transport string) (Result, error) {
	r, ok := s.store.(CertReplacer)
	if !ok {
		return Result{}, errors.New("renew: the store cannot replace certificates")
	}
	csr, err := s.parseCSR(csrDER)
	if err != nil {
		return Result{}, err
	}
	d, err := s.store.Device(ctx, id)
	if errors.Is(err, devices.ErrNotFound) {
		return Result{}, ErrUnknownDevice
	}
	if err != nil {
		return Result{}, err
	}
	now := s.clock.Now().UTC()
	keyHash := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	if presented == "" { // authenticated by an external broker, which checked the chain and CRL
		presented = d.CertSerial
	}
	switch {
	case d.State == devices.StateRevoked:
		return Result{}, ErrRevoked
	case d.State != devices.StateProvisioned && d.State != devices.StateActive:
		return Result{}, fmt.Errorf("%w: device %s is %s", ErrUnknownDevice, d.Serial, d.State)
	case presented == d.PrevCertSerial && now.Sub(d.RenewedAt) <= s.cfg.RetryWindow:
		// A retry from a device that did not get the answer.
		if subtle.ConstantTimeCompare(keyHash[:], d.PublicKeyHash) == 1 {
			return s.replay(ctx, d)
		}
		return Result{}, fmt.Errorf("%w: this certificate was already renewed", ErrTokenUsed)
	case presented != d.CertSerial:
		return Result{}, fmt.Errorf("%w: certificate %s is not the device's current one", ErrRevoked, presented)
	}
	leaf, err := s.signer.IssueDevice(csr, profile.Device{ID: d.ID, Serial: d.Serial, Model: d.Model, Site: d.Site})
	if err != nil {
		return Result{}, fmt.Errorf("renew %s: %w", d.Serial, err)
	}
	certSerial := fmt.Sprintf("%x", leaf.SerialNumber)
	d, err = r.ReplaceCertificate(ctx, id, presented, func(x *devices.Device) {
		x.CertSerial, x.CertDER, x.CertNotAfter, x.PublicKeyHash = certSerial, leaf.Raw, leaf.NotAfter, keyHash[:]
	}, now, devices.AuditEvent{Actor: "device:" + d.Serial, Action: "device.renew", Target: d.Serial, Source: source.String(),
		Detail: map[string]string{"transport": transport, "cert_serial": certSerial, "replaces": presented}})
	if errors.Is(err, devices.ErrConflict) {
		return Result{}, fmt.Errorf("%w: renewed concurrently", ErrTokenUsed)
	}
	if err != nil {
		return Result{}, err
	}
	if s.onSuperseded != nil {
		s.onSuperseded()
	}
	s.log.Info("certificate renewed", "serial", d.Serial, "device_id", d.ID, "cert_serial", certSerial, "transport", transport)
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return Result{}, err
	}
	return s.result(ctx, d, site, leaf)
}

// parseCSR checks a CSR's form, key type and proof of possession.
func (s *Service) parseCSR(der []byte) (*x509.CertificateRequest, error) {
	switch {
	case len(der) == 0:
		return nil, fmt.Errorf("%w: csr: required", ErrInvalid)
	case len(der) > s.cfg.MaxCSRBytes:
		return nil, fmt.Errorf("%w: csr: larger than %d bytes", ErrInvalid, s.cfg.MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: csr: not a DER PKCS#10 request: %w", ErrInvalid, err)
	}
	if err := profile.CheckKey(csr.PublicKey, s.cfg.AllowP384, s.cfg.AllowEd25519); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedKey, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: csr: signature does not verify (proof of possession): %w", ErrInvalid, err)
	}
	return csr, nil
}
