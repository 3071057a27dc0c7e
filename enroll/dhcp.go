package enroll

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// DHCP: the inventory's leases served to ordinary DHCP clients. A device is
// known by the MAC it reported at enrollment or by a client identifier
// naming its UUID; it gets exactly its inventory lease, with its site's
// network, and renewing or releasing it moves the inventory's lease.

// DHCPStore is the part of the inventory the DHCP workflows need beside Store.
type DHCPStore interface {
	DevicesByMAC(ctx context.Context, mac string) ([]devices.Device, error)
	ReleaseLease(ctx context.Context, id uuid.UUID, now time.Time, ev devices.AuditEvent) (devices.Device, error)
}

// ErrNotHere is returned when a DHCP request came from a network that is
// not the device's site (a relay of another site, another interface): the
// server stays silent, as for a client it does not know.
var ErrNotHere = errors.New("the request came from another site's network")

// DHCPClient is who a DHCP message says the client is and where it came
// from.
type DHCPClient struct {
	MAC      string // chaddr
	ClientID []byte // option 61, when sent
	// Network is an address of the network the request came from: the
	// relay's giaddr, or the address of the interface it arrived on; the
	// device's site must contain it. Invalid: not checked.
	Network netip.Addr
	Source  netip.AddrPort // for the audit
}

// DHCPLease is what a device's DHCP answer carries.
type DHCPLease struct {
	Device    devices.Device
	Addr      netip.Addr
	PrefixLen int
	Gateway   netip.Addr
	DNS       []netip.Addr
	NTP       []netip.Addr // the site's NTP servers given as addresses (DHCP carries no names)
	Expires   time.Time
}

// ClientIDDevice reads a DHCP client identifier (option 61) that names a
// device: its UUID as text (36 characters) or as 16 bytes, either after a
// type byte 0.
func ClientIDDevice(cid []byte) (uuid.UUID, bool) {
	if len(cid) > 0 && cid[0] == 0 && (len(cid) == 17 || len(cid) == 37) {
		cid = cid[1:]
	}
	switch len(cid) {
	case 16:
		return uuid.UUID(cid), true
	case 36:
		id, err := uuid.ParseBytes(cid)
		return id, err == nil
	}
	return uuid.Nil, false
}

// networkDevice finds the device a DHCP client (or, by MAC alone, a RADIUS
// MAC authorisation) is: by client identifier when it names one, else by
// MAC. Unknown, not yet enrolled and revoked devices are refused
// (ErrUnknownDevice, ErrRevoked); so is a MAC two live devices reported.
func (s *Service) networkDevice(ctx context.Context, c DHCPClient) (devices.Device, devices.Site, error) {
	ds, ok := s.store.(DHCPStore)
	if !ok {
		return devices.Device{}, devices.Site{}, errors.New("dhcp: the store cannot look devices up by MAC")
	}
	var d devices.Device
	if id, ok := ClientIDDevice(c.ClientID); ok {
		var err error
		if d, err = s.store.Device(ctx, id); errors.Is(err, devices.ErrNotFound) {
			return d, devices.Site{}, ErrUnknownDevice
		} else if err != nil {
			return d, devices.Site{}, err
		}
	} else {
		list, err := ds.DevicesByMAC(ctx, c.MAC)
		if errors.Is(err, devices.ErrInvalid) {
			return d, devices.Site{}, ErrUnknownDevice
		} else if err != nil {
			return d, devices.Site{}, err
		}
		live := list[:0]
		for _, x := range list {
			if x.State != devices.StateRevoked {
				live = append(live, x)
			}
		}
		switch {
		case len(live) == 1:
			d = live[0]
		case len(live) > 1:
			return d, devices.Site{}, fmt.Errorf("%w: MAC %s was reported by %d devices", ErrUnknownDevice, c.MAC, len(live))
		case len(list) > 0:
			return list[0], devices.Site{}, ErrRevoked
		default:
			return d, devices.Site{}, ErrUnknownDevice
		}
	}
	switch d.State {
	case devices.StateRevoked:
		return d, devices.Site{}, ErrRevoked
	case devices.StateProvisioned, devices.StateActive:
	default:
		return d, devices.Site{}, fmt.Errorf("%w: device %s is %s, not enrolled", ErrUnknownDevice, d.Serial, d.State)
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return d, site, err
	}
	if c.Network.IsValid() && !site.CIDR.Contains(c.Network) {
		return d, site, fmt.Errorf("%w: device %s is of site %s (%s), the request came from %s", ErrNotHere, d.Serial, site.Name, site.CIDR, c.Network)
	}
	return d, site, nil
}

// DHCPLease answers a DHCPDISCOVER (or a DHCPREQUEST, renew true, which
// must name the address it asks for in requested): the device's inventory
// lease, allocated again when it lapsed, extended by its site's lease time
// on a request. A request for another address than the device's is
// refused with ErrInvalid (the server answers DHCPNAK).
func (s *Service) DHCPLease(ctx context.Context, c DHCPClient, renew bool, requested netip.Addr) (DHCPLease, error) {
	d, site, err := s.networkDevice(ctx, c)
	if err != nil {
		return DHCPLease{}, err
	}
	now := s.clock.Now().UTC()
	held := d.Lease != nil && d.Lease.Site == site.Name && d.Lease.Expires.After(now)
	if renew && held && requested.IsValid() && requested != d.Lease.Addr {
		return DHCPLease{}, fmt.Errorf("%w: %s asks for %s, its lease is %s", ErrInvalid, d.Serial, requested, d.Lease.Addr)
	}
	if renew || !held {
		d, err = s.store.RenewLease(ctx, d.ID, now, devices.AuditEvent{
			Actor: "device:" + d.Serial, Action: "lease.renew", Target: d.Serial, Source: c.Source.String(),
			Detail: map[string]string{"transport": "dhcp"},
		})
		if errors.Is(err, devices.ErrPoolExhausted) {
			return DHCPLease{}, &RetryError{Err: ErrPoolExhausted, After: s.cfg.PoolRetry}
		}
		if err != nil {
			return DHCPLease{}, fmt.Errorf("dhcp lease of %s: %w", d.Serial, err)
		}
		if renew && requested.IsValid() && requested != d.Lease.Addr {
			// The lease had lapsed and its address went to another device.
			return DHCPLease{}, fmt.Errorf("%w: %s asks for %s, its lease is now %s", ErrInvalid, d.Serial, requested, d.Lease.Addr)
		}
	}
	cfg := Render(site, d)
	l := DHCPLease{Device: d, Addr: d.Lease.Addr, PrefixLen: site.CIDR.Bits(), Gateway: site.Gateway, DNS: cfg.Network.DNS,
		Expires: d.Lease.Expires}
	for _, n := range cfg.Network.NTP {
		if a, err := netip.ParseAddr(n); err == nil && a.Is4() {
			l.NTP = append(l.NTP, a)
		}
	}
	return l, nil
}

// DHCPRelease frees the lease of the device that sends a DHCPRELEASE for
// addr (it must be the device's address: a release of another's is
// ignored).
func (s *Service) DHCPRelease(ctx context.Context, c DHCPClient, addr netip.Addr) error {
	d, _, err := s.networkDevice(ctx, c)
	if err != nil {
		return err
	}
	if d.Lease == nil || d.Lease.Addr != addr {
		return fmt.Errorf("%w: %s releases %s, which is not its lease", ErrInvalid, d.Serial, addr)
	}
	_, err = s.store.(DHCPStore).ReleaseLease(ctx, d.ID, s.clock.Now().UTC(), devices.AuditEvent{
		Actor: "device:" + d.Serial, Action: "lease.release", Target: d.Serial, Source: c.Source.String(),
		Detail: map[string]string{"transport": "dhcp"},
	})
	return err
}
