// Package netnstest gives tests two network namespaces of their own joined
// by a veth pair, with addresses no interface of the machine uses, and
// removes them when the test ends. Nothing is added to the machine's own
// namespace: both ends of the pair are created inside the new namespaces.
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/provisiond/provisiond/internal/testtools"
)

// Pair is two namespaces, Server and Client, with the veth ends
// ServerIf (ServerAddr in Prefix) and ClientIf (no address).
type Pair struct {
	Server, Client     string // namespace names
	ServerIf, ClientIf string
	Prefix             netip.Prefix
	ServerAddr         netip.Addr
	ip                 string
}

// New creates the pair in a /24 of 198.18.0.0/15 (RFC 2544's benchmarking
// range) that no interface of the machine uses. It needs root and iproute2;
// without them it fails where tools are required, else skips.
func New(t testing.TB) *Pair {
	t.Helper()
	ip := testtools.Need(t, "ip")
	if os.Geteuid() != 0 {
		if testtools.Required() {
			t.Fatal("network namespace tests need root")
		}
		t.Skip("network namespace tests need root")
	}
	used, err := exec.Command(ip, "-4", "-o", "addr", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var prefix netip.Prefix
	for {
		b := make([]byte, 1)
		_, _ = rand.Read(b)
		prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + b[0]&1, b[0], 0}), 24)
		if !strings.Contains(string(used), fmt.Sprintf(" 198.%d.%d.", 18+b[0]&1, b[0])) {
			break
		}
	}
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	id := hex.EncodeToString(tag)
	p := &Pair{Server: "pvd-" + id + "-s", Client: "pvd-" + id + "-c", ServerIf: "pv" + id + "s", ClientIf: "pv" + id + "c",
		Prefix: prefix, ServerAddr: prefix.Addr().Next(), ip: ip}
	t.Cleanup(func() {
		_ = exec.Command(ip, "netns", "del", p.Server).Run()
		_ = exec.Command(ip, "netns", "del", p.Client).Run()
	})
	for _, args := range [][]string{
		{"netns", "add", p.Server},
		{"netns", "add", p.Client},
		{"link", "add", p.ServerIf, "netns", p.Server, "type", "veth", "peer", "name", p.ClientIf, "netns", p.Client},
		{"-n", p.Server, "addr", "add", netip.PrefixFrom(p.ServerAddr, 24).String(), "dev", p.ServerIf},
		{"-n", p.Server, "link", "set", "lo", "up"},
		{"-n", p.Server, "link", "set", p.ServerIf, "up"},
		{"-n", p.Client, "link", "set", "lo", "up"},
		{"-n", p.Client, "link", "set", p.ClientIf, "up"},
	} {
		p.IP(t, args...)
	}
	return p
}

// IP runs ip(8) with args, failing the test on an error.
func (p *Pair) IP(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(p.ip, args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Command is name with args run inside namespace ns.
func (p *Pair) Command(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, p.ip, append([]string{"netns", "exec", ns, name}, args...)...)
}

// In runs fn on an OS thread inside namespace ns: sockets fn opens belong
// to ns and stay there. The thread is returned to the test's namespace
// afterwards (or, if that fails, never used again).
func In(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("back from %s: %w (thread left locked)", ns, err)
			return // the goroutine ends with the thread locked: Go discards it
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Relayed is three namespaces in a row, a DHCP relay's place in the
// middle: Server —ServerIf/RelayUp— Relay —RelayDown/ClientIf— Client.
// The client's network (ClientNet) is another than the server's (Prefix);
// the server routes ClientNet through the relay.
type Relayed struct {
	Pair                   // Server, Client, Prefix (the server's network), ServerAddr, ServerIf, ClientIf
	Relay                  string
	RelayUp, RelayDown     string
	RelayUpAddr, RelayAddr netip.Addr // the relay's addresses on each side; RelayAddr is the giaddr
	ClientNet              netip.Prefix
}

// NewRelayed creates the three namespaces and two veth pairs.
func NewRelayed(t testing.TB) *Relayed {
	t.Helper()
	p := New(t) // Server and Client, joined directly: re-wired below
	r := &Relayed{Pair: *p, Relay: strings.TrimSuffix(p.Server, "-s") + "-r"}
	id := strings.TrimSuffix(strings.TrimPrefix(p.Server, "pvd-"), "-s")
	r.RelayUp, r.RelayDown = "pv"+id+"u", "pv"+id+"d"
	b := p.Prefix.Addr().As4()
	r.ClientNet = netip.PrefixFrom(netip.AddrFrom4([4]byte{b[0], b[1], b[2] ^ 0x80, 0}), 24)
	r.RelayUpAddr, r.RelayAddr = p.ServerAddr.Next(), r.ClientNet.Addr().Next()
	t.Cleanup(func() { _ = exec.Command(p.ip, "netns", "del", r.Relay).Run() })
	for _, args := range [][]string{
		{"netns", "add", r.Relay},
		// The pair's veth goes (deleting one end deletes both): the server
		// and the client each hang off the relay instead.
		{"-n", p.Client, "link", "del", p.ClientIf},
		{"link", "add", r.RelayUp, "netns", r.Relay, "type", "veth", "peer", "name", p.ServerIf, "netns", p.Server},
		{"link", "add", r.RelayDown, "netns", r.Relay, "type", "veth", "peer", "name", p.ClientIf, "netns", p.Client},
		{"-n", p.Server, "addr", "add", netip.PrefixFrom(p.ServerAddr, 24).String(), "dev", p.ServerIf},
		{"-n", p.Server, "link", "set", p.ServerIf, "up"},
		{"-n", p.Server, "route", "add", r.ClientNet.String(), "via", r.RelayUpAddr.String()},
		{"-n", r.Relay, "link", "set", "lo", "up"},
		{"-n", r.Relay, "addr", "add", netip.PrefixFrom(r.RelayUpAddr, 24).String(), "dev", r.RelayUp},
		{"-n", r.Relay, "addr", "add", netip.PrefixFrom(r.RelayAddr, 24).String(), "dev", r.RelayDown},
		{"-n", r.Relay, "link", "set", r.RelayUp, "up"},
		{"-n", r.Relay, "link", "set", r.RelayDown, "up"},
		{"-n", p.Client, "link", "set", p.ClientIf, "up"},
	} {
		p.IP(t, args...)
	}
	return r
}
