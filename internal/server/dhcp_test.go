package server_test

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/netnstest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// dhcpRig is provisiond with its DHCP socket inside the server namespace of
// a namespace pair, and a site on the pair's network.
type dhcpRig struct {
	env  *servertest.Env
	pair *netnstest.Pair
}

func newDHCPRig(t *testing.T) *dhcpRig {
	t.Helper()
	pair := netnstest.New(t)
	var conn net.PacketConn
	if err := netnstest.In(pair.Server, func() error {
		c, err := server4.NewIPv4UDPConn(pair.ServerIf, &net.UDPAddr{Port: dhcpv4.ServerPort})
		conn = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, func(c *server.Config) {
		c.DHCPConn, c.DHCPServerIP = conn, pair.ServerAddr.String()
	})
	createSite(t, env, "lan", pair.Prefix, pair.ServerAddr)
	return &dhcpRig{env: env, pair: pair}
}

func createSite(t *testing.T, env *servertest.Env, name string, cidr netip.Prefix, gw netip.Addr) {
	t.Helper()
	str := func(s string) *string { return &s }
	dns := []string{gw.String()}
	ntp := []string{gw.String(), "pool.ntp.org"}
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/sites", httpapi.SiteRequest{
		Name: str(name), SSID: str("ssid-" + name), Security: str("wpa2-psk"), Passphrase: str("passphrase-" + name),
		CIDR: str(cidr.String()), Gateway: str(gw.String()), DNS: &dns, NTP: &ntp, Lease: str("1h"),
	}, nil); err != nil {
		t.Fatal(err)
	}
}

// enrolled mints and enrolls a device of site over CoAP, reporting mac.
func enrolled(t *testing.T, env *servertest.Env, site, mac string) devices.Device {
	t.Helper()
	b := env.Mint(1, site)[0]
	d, err := simulator.NewDevice(b)
	if err != nil {
		t.Fatal(err)
	}
	d.MAC = mac
	if _, err := d.Enroll(context.Background(), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	stored, err := env.Server.Store().DeviceBySerial(context.Background(), b.Serial)
	if err != nil || stored.Lease == nil {
		t.Fatalf("enrolled %s: %+v %v", b.Serial, stored, err)
	}
	return stored
}

// udhcpc runs BusyBox's udhcpc once on the client end with MAC mac and
// returns what its script was told ("" when it got no lease).
func (r *dhcpRig) udhcpc(t *testing.T, mac string, extra ...string) string {
	t.Helper()
	bin := testtools.Need(t, "udhcpc")
	r.pair.IP(t, "-n", r.pair.Client, "link", "set", r.pair.ClientIf, "address", mac)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	script := filepath.Join(dir, "script.sh")
	os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip subnet=$subnet router=$router dns=$dns ntpsrv=$ntpsrv lease=$lease\" >> "+out+"\nexit 0\n"), 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := append([]string{"-i", r.pair.ClientIf, "-f", "-q", "-n", "-t", "2", "-T", "1", "-A", "1", "-s", script}, extra...)
	cmd := r.pair.Command(ctx, r.pair.Client, bin, args...)
	cmdOut, err := cmd.CombinedOutput()
	got, _ := os.ReadFile(out)
	if err != nil && len(got) > 0 {
		t.Fatalf("udhcpc: %v\n%s", err, cmdOut)
	}
	return strings.TrimSpace(string(got))
}

// dhclient runs ISC dhclient once on the client end (MAC mac) with the
// lease file lf, and returns the lease file ("" when it got no lease).
func (r *dhcpRig) dhclient(t *testing.T, mac, lf string, conf string, args ...string) string {
	t.Helper()
	bin := testtools.Need(t, "dhclient")
	r.pair.IP(t, "-n", r.pair.Client, "link", "set", r.pair.ClientIf, "address", mac)
	dir := filepath.Dir(lf)
	cf := filepath.Join(dir, "dhclient.conf")
	os.WriteFile(cf, []byte("timeout 6;\nretry 1;\ninitial-interval 1;\nrequest subnet-mask, routers, domain-name-servers, ntp-servers;\n"+conf), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"-1", "-v", "-cf", cf, "-lf", lf, "-pf", filepath.Join(dir, "pid"), "-sf", "/bin/true"}, args...)
	out, err := r.pair.Command(ctx, r.pair.Client, bin, append(all, r.pair.ClientIf)...).CombinedOutput()
	if err != nil {
		t.Logf("dhclient %v: %v\n%s", args, err, out)
	}
	raw, _ := os.ReadFile(lf)
	return string(raw)
}

var fixedAddress = regexp.MustCompile(`fixed-address ([0-9.]+);`)

// lastLease is the address of the newest lease in a dhclient lease file.
func lastLease(leases string) string {
	m := fixedAddress.FindAllStringSubmatch(leases, -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

// Ordinary DHCP clients get exactly the inventory's leases: BusyBox's
// udhcpc and ISC dhclient, on a network namespace pair, with the site's
// mask, gateway, DNS and NTP; a renewal moves the inventory's expiry, a
// release frees the lease; two devices never share an address; a revoked
// device and an unknown MAC get nothing.
func TestDHCPServesInventoryLeases(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	r := newDHCPRig(t)
	env := r.env
	ctx := context.Background()
	macA, macB := "02:5e:10:00:00:0a", "02:5e:10:00:00:0b"
	a := enrolled(t, env, "lan", macA)
	b := enrolled(t, env, "lan", "") // reported no MAC: known by its client identifier
	if a.Lease.Addr == b.Lease.Addr {
		t.Fatalf("two devices share %s", a.Lease.Addr)
	}
	gw := r.pair.ServerAddr.String()

	got := r.udhcpc(t, macA)
	want := "ip=" + a.Lease.Addr.String() + " subnet=255.255.255.0 router=" + gw + " dns=" + gw + " ntpsrv=" + gw
	if !strings.HasPrefix(got, want) {
		t.Fatalf("udhcpc for device A: %q, want %q...", got, want)
	}

	// dhclient, known by its client identifier (the device UUID).
	dir := t.TempDir()
	lf := filepath.Join(dir, "leases")
	cid := "send dhcp-client-identifier \"" + b.ID.String() + "\";\n"
	leases := r.dhclient(t, macB, lf, cid)
	if lastLease(leases) != b.Lease.Addr.String() || !strings.Contains(leases, "option routers "+gw+";") ||
		!strings.Contains(leases, "option domain-name-servers "+gw+";") || !strings.Contains(leases, "option ntp-servers "+gw+";") {
		t.Fatalf("dhclient for device B (client identifier):\n%s", leases)
	}
	// Renewal: the inventory's expiry moves.
	env.Clock.Advance(10 * time.Minute)
	before, _ := env.Server.Store().Device(ctx, b.ID)
	if leases = r.dhclient(t, macB, lf, cid); lastLease(leases) != b.Lease.Addr.String() {
		t.Fatalf("renewal:\n%s", leases)
	}
	after, _ := env.Server.Store().Device(ctx, b.ID)
	if after.Lease == nil || !after.Lease.Expires.After(before.Lease.Expires) {
		t.Fatalf("the renewal did not move the inventory's lease: %v -> %v", before.Lease, after.Lease)
	}
	// Release: the client holds its address, then lets it go.
	r.pair.IP(t, "-n", r.pair.Client, "addr", "add", netip.PrefixFrom(b.Lease.Addr, r.pair.Prefix.Bits()).String(), "dev", r.pair.ClientIf)
	r.dhclient(t, macB, lf, cid, "-r")
	r.pair.IP(t, "-n", r.pair.Client, "addr", "flush", "dev", r.pair.ClientIf)
	// DHCPRELEASE has no answer: dhclient exits once it is sent, and the
	// server commits the release a moment later (its store batches
	// commits for up to 10 ms).
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		released, _ := env.Server.Store().Device(ctx, b.ID)
		if released.Lease == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after DHCPRELEASE the device still holds %v", released.Lease)
		}
	}

	// An unknown MAC and a revoked device get no address.
	if got := r.udhcpc(t, "02:5e:10:00:00:99"); got != "" {
		t.Fatalf("unknown MAC got %q", got)
	}
	if err := env.Client.Do(ctx, http.MethodPost, "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{a.Serial}, Reason: "stolen"}, nil); err != nil {
		t.Fatal(err)
	}
	if got := r.udhcpc(t, macA); got != "" {
		t.Fatalf("revoked device got %q", got)
	}
}

// Behind a router: ISC's dhcrelay forwards a client's DISCOVER with its own
// address on the client's network as giaddr; provisiond answers a device of
// the site that network is (the relay passes the answer on, udhcpc gets its
// inventory address), and stays silent for a device of another site asking
// from there.
func TestDHCPThroughARelay(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	relay := testtools.Need(t, "dhcrelay")
	r := netnstest.NewRelayed(t)
	var conn net.PacketConn
	if err := netnstest.In(r.Server, func() error {
		c, err := server4.NewIPv4UDPConn(r.ServerIf, &net.UDPAddr{Port: dhcpv4.ServerPort})
		conn = c
		return err
	}); err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, func(c *server.Config) { c.DHCPConn, c.DHCPServerIP = conn, r.ServerAddr.String() })
	createSite(t, env, "branch", r.ClientNet, r.RelayAddr) // behind the relay
	createSite(t, env, "hq", r.Prefix, r.ServerAddr)       // the server's own network
	branch := enrolled(t, env, "branch", "02:5e:10:00:01:0a")
	hq := enrolled(t, env, "hq", "02:5e:10:00:01:0b")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuffer{}
	cmd := r.Command(ctx, r.Relay, relay, "-d", "-4", "-iu", r.RelayUp, "-id", r.RelayDown, r.ServerAddr.String())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("dhcrelay:\n%s", out.String())
		}
	}()
	rig := &dhcpRig{env: env, pair: &r.Pair}
	got := rig.udhcpc(t, "02:5e:10:00:01:0a")
	if want := "ip=" + branch.Lease.Addr.String() + " subnet=255.255.255.0 router=" + r.RelayAddr.String(); !strings.HasPrefix(got, want) {
		t.Fatalf("relayed, the branch device got %q, want %q...", got, want)
	}
	if got := rig.udhcpc(t, "02:5e:10:00:01:0b"); got != "" {
		t.Fatalf("relayed from the branch network, the hq device %s got %q", hq.Serial, got)
	}
}
