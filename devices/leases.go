package devices

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Provisioning is one enrollment commit, prepared (and its certificate signed)
// outside the transaction.
type Provisioning struct {
	DeviceID uuid.UUID
	// Rev is the device revision the caller decided on; a different stored
	// revision fails the commit with ErrConflict.
	Rev uint64
	Now time.Time
	// Apply sets the new state, identity and config fields on the device. It may
	// run more than once (the transaction may), so it must only assign fields.
	Apply func(d *Device)
	Audit AuditEvent
	// Supersede records the device's current certificate, if it has one,
	// as superseded (CRL, OCSP) in the same transaction: a device that is
	// given a new identity in place of its old one (an LwM2M re-bootstrap).
	Supersede bool
}

// Provision commits an enrollment in one transaction: it re-checks the
// device's revision, keeps its unexpired lease in the device's site or
// allocates a new address from the site's pool, applies the caller's changes
// and appends the audit event. Concurrent calls share commits.
func (s *Store) Provision(ctx context.Context, p Provisioning) (Device, error) {
	var out Device
	err := kv.Batch(ctx, s.db, func(tx kv.Tx) error {
		d, err := getDevice(tx, p.DeviceID)
		if err != nil {
			return err
		}
		if d.Rev != p.Rev {
			return fmt.Errorf("provision %s: %w", d.Serial, ErrConflict)
		}
		site, err := getSite(tx, d.Site)
		if err != nil {
			return err
		}
		d, err = mutate(tx, d, p.Now, func(d *Device) error {
			lease, err := acquireLease(tx, &site, d, p.Now)
			if err != nil {
				return fmt.Errorf("lease for %s in site %q: %w", d.Serial, site.Name, err)
			}
			if p.Supersede && d.CertSerial != "" {
				if err := putJSON(tx, bucketRevoked, []byte(d.CertSerial),
					RevokedCert{Serial: d.CertSerial, DeviceID: d.ID, RevokedAt: p.Now, Reason: "superseded"}); err != nil {
					return err
				}
				d.PrevCertSerial = "" // unlike a renewal, the old one is refused at once
			}
			p.Apply(d)
			d.Lease = &lease
			return nil
		})
		if err != nil {
			return err
		}
		ev := p.Audit
		ev.Time = p.Now
		if err := appendAudit(tx, ev); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}

// RenewLease extends the device's lease by its site's lease time; when the
// lease has lapsed and its address was reclaimed, a new address is allocated.
func (s *Store) RenewLease(ctx context.Context, id uuid.UUID, now time.Time, ev AuditEvent) (Device, error) {
	var out Device
	err := kv.Batch(ctx, s.db, func(tx kv.Tx) error {
		d, err := getDevice(tx, id)
		if err != nil {
			return err
		}
		if d.Site == "" {
			return fmt.Errorf("renew lease of %s: %w", d.Serial, ErrNoLease)
		}
		site, err := getSite(tx, d.Site)
		if err != nil {
			return err
		}
		d, err = mutate(tx, d, now, func(d *Device) error {
			lease, err := acquireLease(tx, &site, d, now)
			if err != nil {
				return fmt.Errorf("renew lease of %s: %w", d.Serial, err)
			}
			d.Lease = &lease
			return nil
		})
		if err != nil {
			return err
		}
		e := ev.with("address", d.Lease.Addr.String(), "expires", d.Lease.Expires.Format(time.RFC3339))
		e.Time = now
		if err := appendAudit(tx, e); err != nil {
			return err
		}
		out = d
		return nil
	})
	return out, err
}

// LeasesInUse counts a site's leases that have not expired at now.
func (s *Store) LeasesInUse(ctx context.Context, site string, now time.Time) (n int, err error) {
	err = s.db.View(ctx, func(tx kv.Tx) error {
		n = 0
		prefix := append([]byte(site), 0)
		return tx.Ascend(bucketLeases, prefix, nil, func(k, v []byte) (bool, error) {
			if len(k) != len(prefix)+4 {
				return true, nil
			}
			exp, err := leaseExpires(v)
			if err != nil {
				return false, err
			}
			if exp.After(now) {
				n++
			}
			return true, nil
		})
	})
	return n, err
}

// LeasesInUseBySite counts every site's unexpired leases in one pass.
func (s *Store) LeasesInUseBySite(ctx context.Context, now time.Time) (map[string]int, error) {
	var out map[string]int
	err := s.db.View(ctx, func(tx kv.Tx) error {
		out = map[string]int{}
		if err := tx.Ascend(bucketSites, nil, nil, func(k, _ []byte) (bool, error) {
			out[string(k)] = 0
			return true, nil
		}); err != nil {
			return err
		}
		return tx.Ascend(bucketLeases, nil, nil, func(k, v []byte) (bool, error) {
			if len(k) < 5 {
				return true, nil
			}
			exp, err := leaseExpires(v)
			if err != nil {
				return false, err
			}
			if exp.After(now) {
				out[string(k[:len(k)-5])]++
			}
			return true, nil
		})
	})
	return out, err
}

// leaseRecord is a lease as the leases bucket stores it, in CBOR. Its key
// already names the site and the address, so the value holds the device and
// the expiry in Unix seconds (leases end on whole seconds: acquireLease):
// about 25 bytes, against the 120-150 of the JSON Lease stored before
// (issue 17), which still reads.
type leaseRecord struct {
	DeviceID uuid.UUID `cbor:"1,keyasint"`
	Expires  int64     `cbor:"2,keyasint"`
}

func putLease(tx kv.Tx, l Lease) error {
	raw, err := recordEnc.Marshal(leaseRecord{DeviceID: l.DeviceID, Expires: l.Expires.Unix()})
	if err != nil {
		return fmt.Errorf("encode lease %s in %s: %w", l.Addr, l.Site, err)
	}
	return tx.Put(bucketLeases, leaseKey(l.Site, l.Addr), raw)
}

// getLease reads the lease of addr in site, if there is one.
func getLease(tx kv.Tx, site string, addr netip.Addr) (Lease, bool, error) {
	key := leaseKey(site, addr)
	raw, err := kv.Peek(tx, bucketLeases, key)
	if raw == nil || err != nil {
		return Lease{}, false, err
	}
	l, err := decodeLease(key, raw)
	return l, true, err
}

// decodeLease reads the lease stored under key k: CBOR, or JSON as written
// before.
func decodeLease(k, v []byte) (Lease, error) {
	if len(v) > 0 && v[0] == '{' {
		var l Lease
		if err := jsonUnmarshal(v, &l); err != nil {
			return Lease{}, fmt.Errorf("lease %x: %w", k, err)
		}
		return l, nil
	}
	var r leaseRecord
	if len(k) < 5 || k[len(k)-5] != 0 {
		return Lease{}, fmt.Errorf("lease key %x: not a site and an address", k)
	}
	if err := recordDec.Unmarshal(v, &r); err != nil {
		return Lease{}, fmt.Errorf("decode lease %x: %w", k, err)
	}
	return Lease{Site: string(k[:len(k)-5]), Addr: netip.AddrFrom4([4]byte(k[len(k)-4:])), DeviceID: r.DeviceID,
		Expires: time.Unix(r.Expires, 0).UTC()}, nil
}

// leaseExpires reads a stored lease's expiry. Counting a million leases is
// on the metrics path, so it decodes only the expiry (BenchmarkLeaseExpires).
// A JSON lease, as stored before, is decoded whole.
func leaseExpires(v []byte) (time.Time, error) {
	if len(v) > 0 && v[0] == '{' {
		var l struct {
			Expires time.Time `json:"expires"`
		}
		return l.Expires, jsonUnmarshal(v, &l)
	}
	var r struct { // leaseRecord's expiry alone: decoding its device ID too costs 25 % more
		Expires int64 `cbor:"2,keyasint"`
	}
	if err := recordDec.Unmarshal(v, &r); err != nil {
		return time.Time{}, fmt.Errorf("decode lease: %w", err)
	}
	return time.Unix(r.Expires, 0).UTC(), nil
}

func leaseKey(site string, a netip.Addr) []byte {
	b := a.As4()
	k := make([]byte, 0, len(site)+5)
	k = append(k, site...)
	k = append(k, 0)
	return append(k, b[:]...)
}

// acquireLease extends d's current lease when it is still its own and in this
// site's pool, and otherwise allocates a free (or expired) address.
//
// The search for a free address starts at an offset derived from the
// device's ID, not at a cursor shared by the site: a shared cursor is a key
// that every enrollment into the site reads and writes, so concurrent
// enrollments on an optimistic engine would all conflict on it and race for
// the same first free address. From a per-device offset they spread over
// the pool and probe disjoint runs until it is nearly full.
func acquireLease(tx kv.Tx, site *Site, d *Device, now time.Time) (Lease, error) {
	expires := now.Add(site.LeaseTTL).UTC().Truncate(time.Second)
	if d.Lease != nil && d.Lease.Site == site.Name && site.CIDR.Contains(d.Lease.Addr) {
		held, ok, err := getLease(tx, site.Name, d.Lease.Addr)
		if err != nil {
			return Lease{}, err
		}
		if ok && held.DeviceID == d.ID {
			held.Expires = expires
			return held, putLease(tx, held)
		}
	}
	if d.Lease != nil { // lease of another site or pool, or reclaimed: let it go
		if err := releaseLease(tx, d); err != nil {
			return Lease{}, err
		}
	}
	base := binary.BigEndian.Uint32(site.CIDR.Addr().AsSlice())
	hosts := uint32(1)<<(32-site.CIDR.Bits()) - 2 // without network and broadcast
	start := binary.BigEndian.Uint32(d.ID[12:]) % hosts
	for i := range hosts {
		off := (start + i) % hosts
		var a4 [4]byte
		binary.BigEndian.PutUint32(a4[:], base+1+off)
		addr := netip.AddrFrom4(a4)
		if addr == site.Gateway {
			continue
		}
		held, ok, err := getLease(tx, site.Name, addr)
		if err != nil {
			return Lease{}, err
		}
		if ok && held.Expires.After(now) {
			continue
		}
		if ok { // expired: reclaim it from its former holder
			if err := reclaim(tx, held, now); err != nil {
				return Lease{}, err
			}
		}
		l := Lease{Site: site.Name, Addr: addr, DeviceID: d.ID, Expires: expires}
		return l, putLease(tx, l)
	}
	return Lease{}, ErrPoolExhausted
}

// releaseLease frees the address d holds, if the lease record is still d's.
func releaseLease(tx kv.Tx, d *Device) error {
	if d.Lease == nil {
		return nil
	}
	held, ok, err := getLease(tx, d.Lease.Site, d.Lease.Addr)
	if err != nil {
		return err
	}
	if ok && held.DeviceID == d.ID {
		if err := tx.Delete(bucketLeases, leaseKey(d.Lease.Site, d.Lease.Addr)); err != nil {
			return err
		}
	}
	d.Lease = nil
	return nil
}

// reclaim takes an expired lease away from the device that held it.
func reclaim(tx kv.Tx, held Lease, now time.Time) error {
	prev, err := getDevice(tx, held.DeviceID)
	if err != nil {
		return err
	}
	if prev.Lease == nil || prev.Lease.Addr != held.Addr || prev.Lease.Site != held.Site {
		return nil
	}
	if prev, err = mutate(tx, prev, now, func(d *Device) error { d.Lease = nil; return nil }); err != nil {
		return err
	}
	return appendAudit(tx, AuditEvent{Time: now, Actor: "system", Action: "lease.expire",
		Target: prev.Serial, Detail: map[string]string{"site": held.Site, "address": held.Addr.String()}})
}
