package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// RevokedCert is a certificate that must no longer be trusted.
type RevokedCert struct {
	Serial    string    `json:"serial"` // hex
	DeviceID  uuid.UUID `json:"device_id"`
	RevokedAt time.Time `json:"revoked_at"`
	Reason    string    `json:"reason"`
}

// CertStatus is what the CA knows of a certificate serial (OCSP).
type CertStatus int

// Certificate statuses.
const (
	CertUnknown CertStatus = iota // never issued here
	CertGood
	CertRevoked
)

// Selector chooses devices for a bulk operation; the sets add up.
type Selector struct {
	IDs   []uuid.UUID `json:"ids,omitempty"`
	Site  string      `json:"site,omitempty"`
	Batch string      `json:"batch,omitempty"`
}

// RevokedCerts lists every revoked certificate (for the CRL).
func (s *Store) RevokedCerts(ctx context.Context) ([]RevokedCert, error) {
	return listJSON[RevokedCert](ctx, s, bucketRevoked)
}

// CertStatus tells whether a certificate serial (hex) was issued here and
// whether it is revoked.
func (s *Store) CertStatus(ctx context.Context, serial string) (CertStatus, RevokedCert, error) {
	var st CertStatus
	var rc RevokedCert
	err := s.db.View(ctx, func(tx kv.Tx) error {
		st, rc = CertUnknown, RevokedCert{}
		ok, err := getJSON(tx, bucketRevoked, []byte(serial), &rc)
		if err != nil {
			return err
		}
		if ok {
			st = CertRevoked
			return nil
		}
		for _, b := range [][]byte{bucketCerts, bucketServerCerts} {
			raw, err := tx.Get(b, []byte(serial))
			if err != nil {
				return err
			}
			if raw != nil {
				st = CertGood
			}
		}
		return nil
	})
	return st, rc, err
}

// Reopen lets a revoked device enroll again with a new claim token: it
// becomes claimed (or manufactured when it has no site) and forgets its
// certificate; the old one stays revoked. A non-nil newID gives the device a
// new identity (the site's new-identity policy): its record moves to newID.
func (s *Store) Reopen(ctx context.Context, id uuid.UUID, tokenHash []byte, newID uuid.UUID, now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.State != StateRevoked {
			return fmt.Errorf("%w: device %s is %s; only a revoked device can be re-opened", ErrInvalid, d.Serial, d.State)
		}
		reopen := func(d *Device) error {
			d.State = StateManufactured
			if d.Site != "" {
				d.State = StateClaimed
			}
			d.TokenHash = tokenHash
			d.WiFiPSK = "" // revoked devices lose it; enrolling again gives a new one
			d.CertSerial, d.CertDER, d.PublicKeyHash, d.CertNotAfter = "", nil, nil, time.Time{}
			d.ProvisionedAt, d.AppliedConfigVersion, d.Health = time.Time{}, 0, ""
			return nil
		}
		e := ev.with()
		if newID != uuid.Nil {
			// Re-key: the old record and its index entries go, the new ID
			// takes the serial (and, in the index, everything else).
			old := d
			if err := tx.Delete(bucketDevices, id[:]); err != nil {
				return err
			}
			if err := deleteIndexes(tx, &old); err != nil {
				return err
			}
			_ = reopen(&d)
			d.ID, d.UpdatedAt, d.Rev = newID, now, old.Rev+1
			if err := putDevice(tx, nil, &d); err != nil {
				return err
			}
			e = e.with("previous_device_id", id.String(), "device_id", newID.String())
		} else if d, err = mutate(tx, d, now, reopen); err != nil {
			return err
		}
		e.Time, e.Action, e.Target = now, "device.reopen", d.Serial
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}

// ReplaceCertificate commits a renewal: the device's current certificate must
// still be fromSerial (else ErrConflict); it is recorded as superseded (CRL,
// OCSP) and apply installs the new one, in one transaction with its audit event.
func (s *Store) ReplaceCertificate(ctx context.Context, id uuid.UUID, fromSerial string, apply func(d *Device), now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := kv.Batch(ctx, s.db, func(tx kv.Tx) error {
		d, err := mutateDevice(tx, id, now, func(d *Device) error {
			if d.CertSerial != fromSerial {
				return fmt.Errorf("renew %s: %w", d.Serial, ErrConflict)
			}
			if err := putJSON(tx, bucketRevoked, []byte(fromSerial),
				RevokedCert{Serial: fromSerial, DeviceID: d.ID, RevokedAt: now, Reason: "superseded"}); err != nil {
				return err
			}
			apply(d)
			d.PrevCertSerial, d.RenewedAt = fromSerial, now
			return nil
		})
		if err != nil {
			return err
		}
		e := ev
		e.Time = now
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}

// ServerCert is a certificate provisiond's CA issued to another service (an
// external MQTT broker, a RADIUS server).
type ServerCert struct {
	Serial   string    `json:"serial"` // hex
	Names    []string  `json:"names,omitempty"`
	IPs      []string  `json:"ips,omitempty"`
	NotAfter time.Time `json:"not_after"`
	IssuedAt time.Time `json:"issued_at"`
	IssuedBy string    `json:"issued_by"`
}

var bucketServerCerts = []byte("servercerts") // certificate serial (hex) -> ServerCert

// RecordServerCert records a server certificate the CA issued, with its
// audit event, in one transaction; CertStatus then knows it.
func (s *Store) RecordServerCert(ctx context.Context, c ServerCert, ev AuditEvent) error {
	if c.Serial == "" {
		return fmt.Errorf("%w: serial: required", ErrInvalid)
	}
	return s.db.Update(ctx, func(tx kv.Tx) error {
		if err := putJSON(tx, bucketServerCerts, []byte(c.Serial), c); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// ServerCerts lists the server certificates the CA issued.
func (s *Store) ServerCerts(ctx context.Context) ([]ServerCert, error) {
	return listJSON[ServerCert](ctx, s, bucketServerCerts)
}
