package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// A manufacturer CA (a factory CA) vouches for the devices whose factory
// certificates (IDevIDs) chain to it: such a device proves who it is with
// its certificate instead of a claim token.
//
//	factorycas  ID (hex SHA-256 of the CA certificate) -> FactoryCA
var bucketFactoryCAs = []byte("factorycas")

// Subject fields a factory certificate may name its device's serial in
// (FactoryCA.SerialFields).
const (
	FieldSerialNumber = "serialNumber"
	FieldCN           = "CN"
	FieldOU           = "OU"
	FieldUID          = "UID"
)

// DefaultSerialFields is where the serial is read when a CA says nothing:
// the subject's serialNumber, else its common name (IEEE 802.1AR devices
// carry it in serialNumber; many others only have a CN).
var DefaultSerialFields = []string{FieldSerialNumber, FieldCN}

// FactoryCA is a registered manufacturer root or intermediate.
type FactoryCA struct {
	ID       string    `json:"id"` // hex SHA-256 of CertDER
	Subject  string    `json:"subject"`
	CertDER  []byte    `json:"cert_der"`
	Model    string    `json:"model"`
	Batch    string    `json:"batch,omitempty"` // devices must be in this batch; auto-registered ones join it
	Site     string    `json:"site,omitempty"`  // auto-registered devices are claimed for this site
	NotAfter time.Time `json:"not_after"`
	// AutoRegister registers an unknown serial on first contact (an
	// enrollment group); otherwise the serial must have been imported.
	AutoRegister bool `json:"auto_register,omitempty"`
	// AllowExpired accepts factory certificates past their validity (they
	// often outlive it in the field); never ones not yet valid.
	AllowExpired bool      `json:"allow_expired,omitempty"`
	SerialFields []string  `json:"serial_fields,omitempty"` // empty: DefaultSerialFields
	AddedBy      string    `json:"added_by"`
	AddedAt      time.Time `json:"added_at"`
}

// Fields returns the subject fields the serial is read from, in order.
func (c FactoryCA) Fields() []string {
	if len(c.SerialFields) == 0 {
		return DefaultSerialFields
	}
	return c.SerialFields
}

// ValidSerialField reports whether f names a subject field serials may be read from.
func ValidSerialField(f string) bool {
	switch f {
	case FieldSerialNumber, FieldCN, FieldOU, FieldUID:
		return true
	}
	return false
}

// AddFactoryCA registers a manufacturer CA; ErrExists when it is registered
// already. Its batch and site, when named, must exist (an auto-registering
// CA may name a batch that does not exist yet: the batch is created with it).
func (s *Store) AddFactoryCA(ctx context.Context, ca FactoryCA, ev AuditEvent) (FactoryCA, error) {
	if ca.ID == "" || len(ca.CertDER) == 0 || !ValidName(ca.Model) {
		return FactoryCA{}, fmt.Errorf("%w: factory CA: an ID, a certificate and a valid model are required", ErrInvalid)
	}
	for _, f := range ca.SerialFields {
		if !ValidSerialField(f) {
			return FactoryCA{}, fmt.Errorf("%w: serial field %q: one of serialNumber, CN, OU, UID", ErrInvalid, f)
		}
	}
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		if raw, err := kv.Peek(tx, bucketFactoryCAs, []byte(ca.ID)); err != nil || raw != nil {
			if err == nil {
				err = fmt.Errorf("factory CA %s: %w", ca.ID, ErrExists)
			}
			return err
		}
		if ca.Site != "" {
			if _, err := getSite(tx, ca.Site); err != nil {
				return err
			}
		}
		if ca.Batch != "" {
			var b Batch
			ok, err := getJSON(tx, bucketBatches, []byte(ca.Batch), &b)
			switch {
			case err != nil:
				return err
			case !ok && !ca.AutoRegister:
				return fmt.Errorf("batch %s: %w", ca.Batch, ErrNotFound)
			case !ok:
				b = Batch{ID: ca.Batch, Model: ca.Model, Site: ca.Site, Source: "factory-ca:" + ca.ID,
					CreatedBy: ca.AddedBy, CreatedAt: ca.AddedAt}
				if err := putJSON(tx, bucketBatches, []byte(b.ID), b); err != nil {
					return err
				}
			case b.Model != "" && b.Model != ca.Model:
				return fmt.Errorf("%w: batch %s is of model %s, not %s", ErrInvalid, b.ID, b.Model, ca.Model)
			}
		}
		if err := putJSON(tx, bucketFactoryCAs, []byte(ca.ID), ca); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	if err != nil {
		return FactoryCA{}, err
	}
	return ca, nil
}

// FactoryCAs lists the registered manufacturer CAs, by ID.
func (s *Store) FactoryCAs(ctx context.Context) ([]FactoryCA, error) {
	var out []FactoryCA
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		return tx.Ascend(bucketFactoryCAs, nil, nil, func(k, v []byte) (bool, error) {
			var ca FactoryCA
			if _, err := getJSON(tx, bucketFactoryCAs, k, &ca); err != nil {
				return false, err
			}
			out = append(out, ca)
			return true, nil
		})
	})
	return out, err
}

// RemoveFactoryCA unregisters a manufacturer CA: no device enrolls with a
// certificate under it from then on. Devices it registered stay, with the
// certificates provisiond issued them.
func (s *Store) RemoveFactoryCA(ctx context.Context, id string, ev AuditEvent) (FactoryCA, error) {
	var ca FactoryCA
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		ok, err := getJSON(tx, bucketFactoryCAs, []byte(id), &ca)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("factory CA %s: %w", id, ErrNotFound)
		}
		if err := tx.Delete(bucketFactoryCAs, []byte(id)); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	return ca, err
}

// RegisterFactoryDevice records a device that a factory CA registering on
// first contact vouched for: in state claimed when the CA (or its batch)
// names a site, else manufactured. The CA must still be registered and the
// serial unknown; a serial registered meanwhile (a parallel first contact)
// is returned as it is stored.
func (s *Store) RegisterFactoryDevice(ctx context.Context, caID, serial string, now time.Time, ev AuditEvent) (Device, error) {
	if !ValidSerial(serial) {
		return Device{}, fmt.Errorf("%w: serial %q", ErrInvalid, serial)
	}
	var out Device
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		if raw, err := tx.Get(bucketSerials, []byte(serial)); err != nil || raw != nil {
			if err != nil {
				return err
			}
			d, err := getDevice(tx, uuid.UUID(raw))
			out = d
			return err
		}
		var ca FactoryCA
		ok, err := getJSON(tx, bucketFactoryCAs, []byte(caID), &ca)
		switch {
		case err != nil:
			return err
		case !ok || !ca.AutoRegister:
			return fmt.Errorf("factory CA %s registering on first contact: %w", caID, ErrNotFound)
		}
		site := ca.Site
		if ca.Batch != "" {
			var b Batch
			if _, err := getJSON(tx, bucketBatches, []byte(ca.Batch), &b); err != nil {
				return err
			}
			if site == "" {
				site = b.Site
			}
			b.Count++
			if err := putJSON(tx, bucketBatches, []byte(b.ID), b); err != nil {
				return err
			}
		}
		state := StateManufactured
		if site != "" {
			if _, err := getSite(tx, site); err != nil {
				return err
			}
			state = StateClaimed
		}
		d := Device{ID: uuid.New(), Serial: serial, Model: ca.Model, BatchID: ca.Batch, Site: site, State: state,
			FactoryCA: ca.ID, CreatedAt: now.UTC(), UpdatedAt: now.UTC(), Rev: 1}
		if err := putDevice(tx, nil, &d); err != nil {
			return err
		}
		ev.Time = now.UTC()
		if ev.Detail == nil {
			ev.Detail = map[string]string{}
		}
		ev.Detail["device_id"], ev.Detail["factory_ca"] = d.ID.String(), ca.ID
		if site != "" {
			ev.Detail["site"] = site
		}
		out = d
		return appendAudit(tx, ev)
	})
	return out, err
}
