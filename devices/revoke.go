package devices

import (
	"bytes"
	"fmt"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
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
	IDs   []uuid.UUID
	Site  string
	Batch string
}

// Revoke marks the selected devices revoked in one transaction: their
// certificate goes on the revocation list, their lease is released, and an
// audit event per device records who, why and from where. Devices already
// revoked are left as they are. It returns the devices it revoked.
func (s *Store) Revoke(sel Selector, reason string, now time.Time, ev AuditEvent) ([]Device, error) {
	var out []Device
	err := s.db.Update(func(tx *bolt.Tx) error {
		out = out[:0]
		return forEachSelected(tx, sel, func(d Device) error {
			old := d
			if err := releaseLease(tx, &d); err != nil {
				return err
			}
			if d.CertSerial != "" {
				if err := putJSON(tx.Bucket(bucketRevoked), []byte(d.CertSerial),
					RevokedCert{Serial: d.CertSerial, DeviceID: d.ID, RevokedAt: now, Reason: reason}); err != nil {
					return err
				}
			}
			d.State, d.UpdatedAt, d.Rev = StateRevoked, now, d.Rev+1
			if err := putDevice(tx, &old, &d); err != nil {
				return err
			}
			e := ev
			e.Time, e.Action, e.Target = now, "device.revoke", d.Serial
			e.Detail = map[string]string{"reason": reason, "cert_serial": d.CertSerial, "device_id": d.ID.String()}
			if err := appendAudit(tx, e); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	return out, err
}

// forEachSelected calls fn with every selected device that is not revoked.
func forEachSelected(tx *bolt.Tx, sel Selector, fn func(Device) error) error {
	ids, err := selectDevices(tx, sel)
	if err != nil {
		return err
	}
	for _, id := range ids {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.State == StateRevoked {
			continue
		}
		if err := fn(d); err != nil {
			return err
		}
	}
	return nil
}

func selectDevices(tx *bolt.Tx, sel Selector) ([]uuid.UUID, error) {
	seen := map[uuid.UUID]bool{}
	var ids []uuid.UUID
	add := func(id uuid.UUID) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, id := range sel.IDs {
		if tx.Bucket(bucketDevices).Get(id[:]) == nil {
			return nil, fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		add(id)
	}
	if sel.Site != "" {
		if _, err := getSite(tx, sel.Site); err != nil {
			return nil, err
		}
		prefix := append([]byte(sel.Site), 0)
		c := tx.Bucket(bucketBySite).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, _ = c.Next() {
			add(uuid.UUID(k[len(prefix):]))
		}
	}
	if sel.Batch != "" {
		if tx.Bucket(bucketBatches).Get([]byte(sel.Batch)) == nil {
			return nil, fmt.Errorf("batch %q: %w", sel.Batch, ErrNotFound)
		}
		err := joinRanges(filterRanges(tx, Filter{Batch: sel.Batch}), uuid.Nil, func(id uuid.UUID) (bool, error) {
			add(id)
			return true, nil
		})
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// RevokedCerts lists every revoked certificate (for the CRL).
func (s *Store) RevokedCerts() ([]RevokedCert, error) { return listJSON[RevokedCert](s, bucketRevoked) }

// CertStatus tells whether a certificate serial (hex) was issued here and
// whether it is revoked.
func (s *Store) CertStatus(serial string) (CertStatus, RevokedCert, error) {
	var st CertStatus
	var rc RevokedCert
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketRevoked), []byte(serial), &rc)
		switch {
		case err != nil:
			return err
		case ok:
			st = CertRevoked
		case tx.Bucket(bucketCerts).Get([]byte(serial)) != nil:
			st = CertGood
		}
		return nil
	})
	return st, rc, err
}

// Reopen lets a revoked device enroll again with a new claim token: it
// becomes claimed (or manufactured when it has no site) and forgets its
// certificate; the old one stays revoked. A non-nil newID gives the device a
// new identity (the site's new-identity policy): its record moves to newID.
func (s *Store) Reopen(id uuid.UUID, tokenHash []byte, newID uuid.UUID, now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := s.db.Update(func(tx *bolt.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.State != StateRevoked {
			return fmt.Errorf("%w: device %s is %s; only a revoked device can be re-opened", ErrInvalid, d.Serial, d.State)
		}
		old := d
		d.State = StateManufactured
		if d.Site != "" {
			d.State = StateClaimed
		}
		d.TokenHash = tokenHash
		d.CertSerial, d.CertDER, d.PublicKeyHash, d.CertNotAfter = "", nil, nil, time.Time{}
		d.ProvisionedAt, d.AppliedConfigVersion, d.Health = time.Time{}, 0, ""
		d.UpdatedAt, d.Rev = now, d.Rev+1
		if newID != uuid.Nil {
			// Re-key: the old record and its site index entry go, the new ID
			// takes the serial.
			if err := tx.Bucket(bucketDevices).Delete(id[:]); err != nil {
				return err
			}
			if err := deleteIndexes(tx, &old); err != nil {
				return err
			}
			if err := tx.Bucket(bucketSerials).Put([]byte(d.Serial), newID[:]); err != nil {
				return err
			}
			d.ID = newID
			if ev.Detail == nil {
				ev.Detail = map[string]string{}
			}
			ev.Detail["previous_device_id"], ev.Detail["device_id"] = id.String(), newID.String()
			if err := putDevice(tx, nil, &d); err != nil {
				return err
			}
		} else if err := putDevice(tx, &old, &d); err != nil {
			return err
		}
		ev.Time, ev.Action, ev.Target = now, "device.reopen", d.Serial
		if err := appendAudit(tx, ev); err != nil {
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
func (s *Store) ReplaceCertificate(id uuid.UUID, fromSerial string, apply func(d *Device), now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := s.db.Batch(func(tx *bolt.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.CertSerial != fromSerial {
			return fmt.Errorf("renew %s: %w", d.Serial, ErrConflict)
		}
		old := d
		if err := putJSON(tx.Bucket(bucketRevoked), []byte(fromSerial),
			RevokedCert{Serial: fromSerial, DeviceID: d.ID, RevokedAt: now, Reason: "superseded"}); err != nil {
			return err
		}
		apply(&d)
		d.PrevCertSerial, d.RenewedAt = fromSerial, now
		d.UpdatedAt, d.Rev = now, d.Rev+1
		if err := putDevice(tx, &old, &d); err != nil {
			return err
		}
		ev.Time = now
		if err := appendAudit(tx, ev); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}

// SetOverride sets (or, with nil, clears) the config override of the
// selected devices in one transaction, however many. Enrolled devices get a
// new config version, and their IDs are returned so that the new config can
// be pushed; each changed device gets an audit event. Revoked devices are
// skipped.
func (s *Store) SetOverride(sel Selector, o *ConfigOverride, now time.Time, ev AuditEvent) ([]uuid.UUID, int, error) {
	var affected []uuid.UUID
	changed := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		affected, changed = affected[:0], 0
		return forEachSelected(tx, sel, func(d Device) error {
			old := d
			d.Override = o
			if d.State == StateProvisioned || d.State == StateActive {
				d.ConfigVersion++
				affected = append(affected, d.ID)
			}
			d.UpdatedAt, d.Rev = now, d.Rev+1
			if err := putDevice(tx, &old, &d); err != nil {
				return err
			}
			e := ev
			e.Time, e.Target = now, d.Serial
			e.Detail = map[string]string{"config_version": fmt.Sprint(d.ConfigVersion), "cleared": fmt.Sprint(o == nil)}
			if err := appendAudit(tx, e); err != nil {
				return err
			}
			changed++
			return nil
		})
	})
	return affected, changed, err
}

// BumpConfig gives the enrolled devices of a model, at a site or at every
// site when site is "", a new config version in one transaction, and
// returns their IDs so that the new config can be pushed. It is for a
// change that lives outside the device record (a firmware target). ev is
// recorded once, for the whole change, with the number of devices.
func (s *Store) BumpConfig(model, site string, now time.Time, ev AuditEvent) ([]uuid.UUID, error) {
	var affected []uuid.UUID
	err := s.db.Update(func(tx *bolt.Tx) error {
		affected = affected[:0]
		var ids []uuid.UUID
		if site != "" {
			var err error
			if ids, err = selectDevices(tx, Selector{Site: site}); err != nil {
				return err
			}
		} else {
			c := tx.Bucket(bucketDevices).Cursor()
			for k, _ := c.First(); k != nil; k, _ = c.Next() {
				id, err := uuid.FromBytes(k)
				if err != nil {
					return fmt.Errorf("device key %x: %w", k, err)
				}
				ids = append(ids, id)
			}
		}
		for _, id := range ids {
			d, err := getDevice(tx, id)
			if err != nil {
				return err
			}
			if d.Model != model || (d.State != StateProvisioned && d.State != StateActive) {
				continue
			}
			old := d
			d.ConfigVersion++
			d.UpdatedAt, d.Rev = now, d.Rev+1
			if err := putDevice(tx, &old, &d); err != nil {
				return err
			}
			affected = append(affected, d.ID)
		}
		e := ev
		e.Time = now
		if e.Detail == nil {
			e.Detail = map[string]string{}
		}
		e.Detail["devices"] = fmt.Sprint(len(affected))
		return appendAudit(tx, e)
	})
	return affected, err
}
