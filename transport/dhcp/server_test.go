package dhcp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

var deviceMAC = net.HardwareAddr{0x02, 0x5e, 0x10, 0, 0, 0x0a}

// rig is a DHCP server on a real inventory (bbolt) with one enrolled
// device of site lan, 10.9.0.0/24, whose MAC is deviceMAC. The server's
// socket is loopback: respond is called directly.
func rig(t testing.TB) (*Server, devices.Device) {
	t.Helper()
	ctx := context.Background()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: devices.Buckets})
	if err != nil {
		t.Fatal(err)
	}
	store, err := devices.New(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	site := devices.Site{Name: "lan", SSID: "lan", Security: devices.SecurityWPA2PSK, Passphrase: "passphrase-lan",
		CIDR: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("10.9.0.1")}, NTP: []string{"10.9.0.1"}, LeaseTTL: time.Hour}
	if _, err := store.CreateSite(ctx, site, devices.AuditEvent{Actor: "test", Action: "site.create", Target: "lan"}); err != nil {
		t.Fatal(err)
	}
	_, res, err := store.ImportBatch(ctx, devices.Batch{ID: "b1", Model: "TH1", Site: "lan"},
		[]devices.ImportRow{{Serial: "TH1-0001", Model: "TH1", TokenHash: make([]byte, 32)}},
		devices.AuditEvent{Actor: "test", Action: "batch.import", Target: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.Device(ctx, res[0].DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if d, err = store.Provision(ctx, devices.Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: time.Now().UTC(),
		Apply: func(x *devices.Device) { x.State, x.MAC = devices.StateProvisioned, deviceMAC.String() },
		Audit: devices.AuditEvent{Actor: "test", Action: "device.enroll", Target: d.Serial}}); err != nil {
		t.Fatal(err)
	}
	svc := enroll.New(enroll.Config{}, enroll.Ports{Store: store}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Service: svc, Conn: conn, ServerIP: netip.MustParseAddr("10.9.0.1"), Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, d
}

var peer = &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}

func discover(t testing.TB, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	m, err := dhcpv4.NewDiscovery(deviceMAC, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// The answers to each message type, and where they go.
func TestRespond(t *testing.T) {
	s, d := rig(t)
	lease := net.IP(d.Lease.Addr.AsSlice())
	reply, to, _ := s.respond(discover(t).ToBytes(), peer)
	if reply == nil || reply.MessageType() != dhcpv4.MessageTypeOffer || !reply.YourIPAddr.Equal(lease) ||
		to.String() != "255.255.255.255:68" || reply.SubnetMask().String() != "ffffff00" {
		t.Fatalf("offer: %v to %v", reply, to)
	}
	req, _ := dhcpv4.NewRequestFromOffer(reply)
	if reply, _, _ := s.respond(req.ToBytes(), peer); reply == nil || reply.MessageType() != dhcpv4.MessageTypeAck || !reply.YourIPAddr.Equal(lease) {
		t.Fatalf("ack: %v", reply)
	}
	other := discover(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IPv4(10, 9, 0, 200))))
	if reply, to, _ := s.respond(other.ToBytes(), peer); reply == nil || reply.MessageType() != dhcpv4.MessageTypeNak || to.String() != "255.255.255.255:68" {
		t.Fatalf("a request for another address: %v", reply)
	}
	relayed := discover(t, dhcpv4.WithGatewayIP(net.IPv4(10, 9, 0, 254)))
	if reply, to, _ := s.respond(relayed.ToBytes(), peer); reply == nil || to.String() != "10.9.0.254:67" {
		t.Fatalf("relayed: %v to %v", reply, to)
	}
	elsewhere := discover(t, dhcpv4.WithGatewayIP(net.IPv4(10, 10, 0, 1)))
	if reply, _, result := s.respond(elsewhere.ToBytes(), peer); reply != nil || result != "ignored" {
		t.Fatalf("relayed from another site's network: %v", reply)
	}
	unknown, _ := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, 0, 9})
	if reply, _, _ := s.respond(unknown.ToBytes(), peer); reply != nil {
		t.Fatalf("unknown MAC: %v", reply)
	}
	release := discover(t, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(lease))
	if reply, _, result := s.respond(release.ToBytes(), peer); reply != nil || result != "release" {
		t.Fatalf("release: %v %s", reply, result)
	}
}

// Any datagram: no panic; an answer only to the known device, only
// OFFER, ACK or NAK, with the request's transaction ID, and an address
// only the device's lease.
func FuzzDHCPRespond(f *testing.F) {
	s, d := rig(f)
	lease := net.IP(d.Lease.Addr.AsSlice())
	f.Add(discover(f).ToBytes())
	f.Add(discover(f, dhcpv4.WithGatewayIP(net.IPv4(10, 9, 0, 254))).ToBytes())
	f.Add(discover(f, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(lease))).ToBytes())
	f.Add(discover(f, dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(lease)).ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		reply, to, _ := s.respond(raw, peer)
		if reply == nil {
			return
		}
		m, err := dhcpv4.FromBytes(raw)
		if err != nil || to == nil || reply.TransactionID != m.TransactionID || m.ClientHWAddr.String() != deviceMAC.String() {
			t.Fatalf("answered %v to %v for %v", reply, to, m)
		}
		switch reply.MessageType() {
		case dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck:
			if !reply.YourIPAddr.Equal(lease) {
				t.Fatalf("offered %v, the lease is %v", reply.YourIPAddr, lease)
			}
		case dhcpv4.MessageTypeNak:
		default:
			t.Fatalf("answered %v", reply.MessageType())
		}
	})
}

// DHCP answers per second on a bbolt inventory: a DISCOVER (a read) and a
// REQUEST (a lease renewal: a write with its audit event).
func BenchmarkDHCPRespond(b *testing.B) {
	s, d := rig(b)
	disc := discover(b).ToBytes()
	req := discover(b, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(d.Lease.Addr.AsSlice())))).ToBytes()
	for name, raw := range map[string][]byte{"discover": disc, "request": req} {
		b.Run(name, func(b *testing.B) {
			b.SetParallelism(32) // clients at once (×GOMAXPROCS): commits share fsyncs, as under a site's morning boot
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if reply, _, _ := s.respond(raw, peer); reply == nil {
						b.Fatal("no answer")
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "answers/s")
		})
	}
}

// Two replicas on one etcd inventory answer the same clients at once (a
// site whose two DHCP servers both hear every broadcast): every device's
// leases had lapsed, so each answer allocates again from a pool with one
// spare address. Both replicas offer each device the same address, no two
// devices get one address, and the inventory holds what was offered.
func TestTwoReplicasNeverShareAnAddress(t *testing.T) {
	ctx := context.Background()
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var replicas []*Server
	var store *devices.Store
	for i := range 2 {
		s, err := devices.New(ctx, etcdkv.New(etcd.Client(t), etcdkv.Options{Prefix: "/dhcp-replicas/"}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := New(Config{Service: enroll.New(enroll.Config{}, enroll.Ports{Store: s}, quiet), Conn: conn,
			ServerIP: netip.MustParseAddr("10.9.0.1"), Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		replicas = append(replicas, srv)
		if i == 0 {
			store = s
		}
	}
	// A /28: 13 leasable addresses, 12 devices.
	site := devices.Site{Name: "lan", SSID: "lan", Security: devices.SecurityWPA2PSK, Passphrase: "passphrase-lan",
		CIDR: netip.MustParsePrefix("10.9.0.0/28"), LeaseTTL: time.Hour}
	if _, err := store.CreateSite(ctx, site, devices.AuditEvent{Actor: "test", Action: "site.create", Target: "lan"}); err != nil {
		t.Fatal(err)
	}
	var rows []devices.ImportRow
	for i := range 12 {
		rows = append(rows, devices.ImportRow{Serial: fmt.Sprintf("TH1-%04d", i), Model: "TH1", TokenHash: make([]byte, 32)})
	}
	_, res, err := store.ImportBatch(ctx, devices.Batch{ID: "b1", Model: "TH1", Site: "lan"}, rows,
		devices.AuditEvent{Actor: "test", Action: "batch.import", Target: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	var macs []net.HardwareAddr
	for i, r := range res {
		d, err := store.Device(ctx, r.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		mac := net.HardwareAddr{0x02, 0x5e, 0x10, 0, 1, byte(i)}
		// Enrolled two hours ago with a one-hour lease: lapsed.
		if _, err := store.Provision(ctx, devices.Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: time.Now().Add(-2 * time.Hour).UTC(),
			Apply: func(x *devices.Device) { x.State, x.MAC = devices.StateProvisioned, mac.String() },
			Audit: devices.AuditEvent{Actor: "test", Action: "device.enroll", Target: d.Serial}}); err != nil {
			t.Fatal(err)
		}
		macs = append(macs, mac)
	}
	offers := make([][2]netip.Addr, len(macs))
	var wg sync.WaitGroup
	for i, mac := range macs {
		for r, srv := range replicas {
			wg.Go(func() {
				m, err := dhcpv4.NewDiscovery(mac)
				if err != nil {
					t.Error(err)
					return
				}
				reply, _, result := srv.respond(m.ToBytes(), peer)
				if reply == nil || reply.MessageType() != dhcpv4.MessageTypeOffer {
					t.Errorf("replica %d, device %d: no offer (%s)", r, i, result)
					return
				}
				offers[i][r], _ = netip.AddrFromSlice(reply.YourIPAddr.To4())
			})
		}
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i, o := range offers {
		if o[0] != o[1] {
			t.Errorf("device %d: replica 0 offered %s, replica 1 %s", i, o[0], o[1])
		}
		if j, dup := seen[o[0]]; dup {
			t.Errorf("devices %d and %d were both offered %s", j, i, o[0])
		}
		seen[o[0]] = i
		ds, err := store.DevicesByMAC(ctx, macs[i].String())
		if err != nil || len(ds) != 1 || ds[0].Lease == nil || ds[0].Lease.Addr != o[0] || !ds[0].Lease.Expires.After(time.Now()) {
			t.Errorf("device %d offered %s, inventory %+v (%v)", i, o[0], ds, err)
		}
	}
}
