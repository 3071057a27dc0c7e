package devices

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// NormalizeMAC returns a 48-bit MAC address in the form the inventory
// indexes it, lower case with colons ("02:00:5e:10:00:01"), or false when
// s is not one (a device may report what it likes; only MACs are indexed).
func NormalizeMAC(s string) (string, bool) {
	if len(s) == 12 { // bare hex digits, as some access points send it
		if _, err := hex.DecodeString(s); err == nil {
			s = s[0:4] + "." + s[4:8] + "." + s[8:12]
		}
	}
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", false
	}
	return hw.String(), true
}

// DevicesByMAC returns the devices whose reported MAC is mac (any
// spelling NormalizeMAC reads), in UUID order: usually one, more when a
// MAC was reported twice (a replaced unit re-using a board).
func (s *Store) DevicesByMAC(ctx context.Context, mac string) ([]Device, error) {
	norm, ok := NormalizeMAC(mac)
	if !ok {
		return nil, fmt.Errorf("%w: %q is not a MAC address", ErrInvalid, mac)
	}
	var out []Device
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = out[:0]
		prefix := indexPrefix(fieldMAC, norm)
		var ids []uuid.UUID
		if err := tx.Ascend(bucketIndex, prefix, nil, func(k, _ []byte) (bool, error) {
			if len(k) == len(prefix)+16 {
				ids = append(ids, uuid.UUID(k[len(prefix):]))
			}
			return true, nil
		}); err != nil {
			return err
		}
		for _, id := range ids {
			d, err := getDevice(tx, id)
			if err != nil {
				return err
			}
			out = append(out, d)
		}
		return nil
	})
	return out, err
}

// ReleaseLease frees the device's address (a DHCPRELEASE), with its audit
// event, in one transaction. A device without a lease is left as it is.
func (s *Store) ReleaseLease(ctx context.Context, id uuid.UUID, now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := kv.Batch(ctx, s.db, func(tx kv.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.Lease == nil {
			out = d
			return nil
		}
		e := ev.with("address", d.Lease.Addr.String())
		if d, err = mutate(tx, d, now, func(d *Device) error {
			if err := releaseLease(tx, d); err != nil {
				return err
			}
			d.Lease = nil
			return nil
		}); err != nil {
			return err
		}
		e.Time = now
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}
