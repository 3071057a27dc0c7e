package devices

import (
	"bytes"
	"context"
	"fmt"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Verify checks the inventory's own invariants on top of the engine's own
// check (bbolt's page check), and returns what it found wrong (at most 100 findings; none means
// consistent):
//
//   - every device is reachable by its serial, its site and index entries,
//     and its certificate serial;
//   - a device's lease is a lease record that names it back, so no address
//     is held by two devices;
//   - no lease, certificate serial, serial or index entry names a device
//     that does not exist or no longer holds it.
//
// The audit chain is checked by VerifyAudit.
func (s *Store) Verify(ctx context.Context) ([]string, error) {
	var out []string
	add := func(format string, args ...any) {
		if len(out) < 100 {
			out = append(out, fmt.Sprintf(format, args...))
		}
	}
	if c, ok := s.db.(kv.Checker); ok {
		for _, err := range c.Check(ctx) {
			add("engine: %v", err)
		}
	}
	err := s.db.View(ctx, func(tx kv.Tx) error {
		has := func(bucket, key []byte, want []byte) bool {
			v, err := tx.Get(bucket, key)
			return err == nil && v != nil && (want == nil || bytes.Equal(v, want))
		}
		devs := map[uuid.UUID]*Device{}
		err := tx.Ascend(bucketDevices, nil, nil, func(k, v []byte) (bool, error) {
			var d Device
			if err := decodeDevice(v, &d); err != nil {
				add("device %x: undecodable: %v", k, err)
				return true, nil
			}
			if !bytes.Equal(d.ID[:], k) {
				add("device %x: record says ID %s", k, d.ID)
			}
			devs[d.ID] = &d
			return true, nil
		})
		if err != nil {
			return err
		}
		for id, d := range devs {
			if !has(bucketSerials, []byte(d.Serial), id[:]) {
				add("device %s: serial %s does not lead to it", id, d.Serial)
			}
			if d.Site != "" && !has(bucketBySite, siteDeviceKey(d.Site, id), nil) {
				add("device %s: missing from site %s's index", id, d.Site)
			}
			for _, fv := range indexed(d) {
				if !has(bucketIndex, indexKey(fv[0][0], fv[1], id), nil) {
					add("device %s: missing index entry %s=%q", id, fv[0], fv[1])
				}
			}
			if d.CertSerial != "" && !has(bucketCerts, []byte(d.CertSerial), id[:]) {
				add("device %s: certificate %s does not lead to it", id, d.CertSerial)
			}
			if d.Lease != nil {
				if l, ok, err := getLease(tx, d.Lease.Site, d.Lease.Addr); err != nil || !ok || l.DeviceID != id {
					add("device %s: its lease %s in %s is not its own (record %v, held by %s)", id, d.Lease.Addr, d.Lease.Site, ok, l.DeviceID)
				}
			}
		}
		err = tx.Ascend(bucketLeases, nil, nil, func(k, v []byte) (bool, error) {
			l, err := decodeLease(k, v)
			if err != nil {
				add("lease %x: undecodable: %v", k, err)
				return true, nil
			}
			d, ok := devs[l.DeviceID]
			switch {
			case !ok:
				add("lease %s in %s: held by device %s, which does not exist", l.Addr, l.Site, l.DeviceID)
			case d.Lease == nil || d.Lease.Addr != l.Addr || d.Lease.Site != l.Site:
				add("lease %s in %s: device %s does not hold it", l.Addr, l.Site, l.DeviceID)
			case !bytes.Equal(k, leaseKey(l.Site, l.Addr)):
				add("lease %s in %s: stored under another key", l.Addr, l.Site)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		check := func(bucket []byte, what string, fn func(k []byte, d *Device) bool) error {
			return tx.Ascend(bucket, nil, nil, func(k, v []byte) (bool, error) {
				id, err := uuid.FromBytes(v)
				if len(v) == 0 { // index keys end in the device ID
					if len(k) < 16 {
						add("%s %x: malformed", what, k)
						return true, nil
					}
					id, err = uuid.FromBytes(k[len(k)-16:])
				}
				if err != nil {
					add("%s %x: malformed", what, k)
					return true, nil
				}
				if d, ok := devs[id]; !ok || !fn(k, d) {
					add("%s %q: names device %s, which does not exist or does not match", what, k, id)
				}
				return true, nil
			})
		}
		if err := check(bucketSerials, "serial", func(k []byte, d *Device) bool { return d.Serial == string(k) }); err != nil {
			return err
		}
		// Every certificate ever issued stays listed (revocation checks need
		// it); its device must exist, unless the certificate is revoked and
		// its device was re-opened under a new ID.
		err = tx.Ascend(bucketCerts, nil, nil, func(k, v []byte) (bool, error) {
			id, err := uuid.FromBytes(v)
			if err != nil {
				add("certificate %s: malformed device ID", k)
			} else if _, ok := devs[id]; !ok && !has(bucketRevoked, k, nil) {
				add("certificate %s: issued to device %s, which does not exist", k, id)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		if err := check(bucketBySite, "site index", func(k []byte, d *Device) bool { return bytes.Equal(k, siteDeviceKey(d.Site, d.ID)) }); err != nil {
			return err
		}
		return check(bucketIndex, "index", func(k []byte, d *Device) bool {
			for _, fv := range indexed(d) {
				if bytes.Equal(k, indexKey(fv[0][0], fv[1], d.ID)) {
					return true
				}
			}
			return false
		})
	})
	return out, err
}
