package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/testtools"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestCrashSafety runs provisiond as a real process under a boot storm and
// kills it with SIGKILL at random moments (CRASH_KILLS times, default 5),
// restarting it each time. Devices whose request got no answer retry. At
// the end every device must be enrolled exactly once, with the certificate
// it received, and the inventory must hold together: no address held by two
// devices, no lease or certificate without a device, bbolt's page check and
// the audit chain intact.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a provisiond process")
	}
	kills := 5
	if v, err := strconv.Atoi(os.Getenv("CRASH_KILLS")); err == nil && v > 0 {
		kills = v
	}
	p := newProcess(t)
	p.start()
	defer p.stop(syscall.SIGKILL)

	c := p.client()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	name, ssid, sec, pass, cidr := "hq", "hq", "wpa2-psk", "hq-passphrase", "10.60.0.0/20"
	if err := c.Do(ctx, "POST", "/api/v1/sites", httpapi.SiteRequest{Name: &name, SSID: &ssid, Security: &sec, Passphrase: &pass, CIDR: &cidr}, nil); err != nil {
		t.Fatal(err)
	}
	const n = 1500
	m, err := c.Mint(ctx, "CRASH", n, "hq")
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		outs []simulator.Outcome
		sum  simulator.Summary
	}
	done := make(chan result, 1)
	go func() {
		outs, sum := simulator.Run(ctx, m.Bundles, simulator.RunOptions{Concurrency: 48, Transport: "mix",
			Attempts: 100, Timeout: 3 * time.Second, MaxWait: 300 * time.Millisecond})
		done <- result{outs, sum}
	}()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for i := range kills {
		time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
		p.stop(syscall.SIGKILL)
		t.Logf("kill %d of %d", i+1, kills)
		p.start()
	}
	r := <-done
	t.Logf("storm through %d kills: %v", kills, r.sum)
	p.stop(syscall.SIGTERM)

	s, err := server.OpenInventory(context.Background(), filepath.Join(p.data, "inventory.db"), boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if problems, err := s.Verify(context.Background()); err != nil || len(problems) > 0 {
		t.Fatalf("inventory after %d kills: %v %v", kills, err, problems)
	}
	if head, err := s.VerifyAudit(context.Background()); err != nil {
		t.Fatalf("audit chain (%d events): %v", head.Events, err)
	}
	addrs := map[netip.Addr]string{}
	for _, o := range r.outs {
		if o.Err != nil {
			t.Errorf("%s never enrolled (%d attempts): %v", o.Serial, o.Attempts, o.Err)
			continue
		}
		d, err := s.DeviceBySerial(context.Background(), o.Serial)
		if err != nil {
			t.Fatalf("%s enrolled but is not in the inventory: %v", o.Serial, err)
		}
		if want := fmt.Sprintf("%x", o.Device.Chain[0].SerialNumber); d.CertSerial != want {
			t.Errorf("%s: inventory holds certificate %s, the device was given %s", o.Serial, d.CertSerial, want)
		}
		if d.State != devices.StateProvisioned || d.Lease == nil {
			t.Errorf("%s: state %s, lease %v", o.Serial, d.State, d.Lease)
			continue
		}
		if prev, dup := addrs[d.Lease.Addr]; dup {
			t.Errorf("address %s held by %s and %s", d.Lease.Addr, prev, o.Serial)
		}
		addrs[d.Lease.Addr] = o.Serial
	}
	if inUse, err := s.LeasesInUse(context.Background(), "hq", time.Now()); err != nil || inUse != n {
		t.Errorf("leases in use: %d (%v), want %d", inUse, err, n)
	}
}

// newProcess builds provisiond into a temporary directory and returns a
// process to run it there, with its data directory beside it.
func newProcess(t *testing.T, flags ...string) *process {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "provisiond")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return &process{t: t, bin: bin, data: filepath.Join(dir, "data"), coaps: testtools.FreeAddr(t, "udp"), https: testtools.FreeAddr(t, "tcp"),
		mqtts: testtools.FreeAddr(t, "tcp"), extra: flags}
}

// process is a provisiond child process on fixed loopback ports, so that
// devices find it again after a restart.
type process struct {
	t                   *testing.T
	bin, data           string
	coaps, https, mqtts string
	cmd                 *exec.Cmd
	starts              int
	extra               []string // more flags
}

// sibling is another replica of p's binary, on ports and a data directory
// of its own, with p's flags.
func (p *process) sibling() *process {
	p.t.Helper()
	return &process{t: p.t, bin: p.bin, data: filepath.Join(p.t.TempDir(), "data"), coaps: testtools.FreeAddr(p.t, "udp"),
		https: testtools.FreeAddr(p.t, "tcp"), mqtts: testtools.FreeAddr(p.t, "tcp"), extra: p.extra}
}

// endpoints are where devices reach p.
func (p *process) endpoints() []string { return []string{"coaps://" + p.coaps, "mqtts://" + p.mqtts} }

func (p *process) start() {
	p.t.Helper()
	p.starts++
	logf, err := os.Create(filepath.Join(filepath.Dir(p.data), fmt.Sprintf("server-%d.log", p.starts)))
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	_ = os.Remove(filepath.Join(p.data, "server.json"))
	cmd := exec.Command(p.bin, "--data", p.data, "--coaps-addr", p.coaps, "--http-addr", p.https, "--mqtt-addr", p.mqtts,
		"--advertise-host", "127.0.0.1", "--log-level", "warn")
	cmd.Args = append(cmd.Args, p.extra...)
	cmd.Env = append(os.Environ(), "PROVISIOND_CA_PASSPHRASE=crash-test-passphrase-0123")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := httpapi.Connect("", "", "", p.data); err == nil {
			if _, err := c.Info(context.Background()); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			p.t.Fatalf("provisiond did not come up (start %d):\n%s", p.starts, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *process) stop(sig syscall.Signal) {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	_ = p.cmd.Wait()
	p.cmd = nil
}

func (p *process) client() *httpapi.Client {
	p.t.Helper()
	c, err := httpapi.Connect("", "", "", p.data)
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}
