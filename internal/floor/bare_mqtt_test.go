package floor_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/provisiond/provisiond/internal/floor"
	"github.com/provisiond/provisiond/internal/gcheadroom"
	"github.com/provisiond/provisiond/transport/mqtt/topics"
	"github.com/provisiond/provisiond/transport/wire"
)

// serveBareMQTT starts the bare MQTT server on a loopback port: mochi's
// broker on its own TLS listener (Go's crypto/tls, a client certificate
// requested as provisiond's broker does), with provisiond's capability
// limits. A hook lets every client in and answers each request published
// on a bootstrap enroll topic on its result topic, as provisiond does, in
// mochi's read goroutine: the CSR checked and signed, the answer a CBOR
// reply. It has no claim-token check, no access rules, no inventory, no
// lease and no audit.
func serveBareMQTT(ca *bareCA) (addr string, stop func(), answered *atomic.Int64, err error) {
	m, err := startBareMQTT(ca)
	if err != nil {
		return "", nil, nil, err
	}
	return m.addr, m.stop, m.hook.answered, nil
}

// bareMQTT is a running bare MQTT server.
type bareMQTT struct {
	addr string
	hook *bareHook
	stop func()
}

func startBareMQTT(ca *bareCA) (*bareMQTT, error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 64 * 1024
	caps.MaximumClientWritesPending = 64
	srv := mochi.New(&mochi.Options{InlineClient: true, Capabilities: caps,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	hook := &bareHook{srv: srv, ca: ca, answered: new(atomic.Int64), online: new(atomic.Int64)}
	if err := srv.AddHook(hook, nil); err != nil {
		return nil, err
	}
	// mochi's listener binds the address it is given; take a free port
	// first, as provisiond's tests do.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := probe.Addr().String()
	_ = probe.Close()
	l := listeners.NewTCP(listeners.Config{ID: "bare", Address: addr, TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{ca.serverCert}, ClientAuth: tls.RequestClientCert,
	}})
	if err := srv.AddListener(l); err != nil {
		return nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, err
	}
	return &bareMQTT{addr: addr, hook: hook, stop: func() { _ = srv.Close() }}, nil
}

// bareHook is the bare MQTT server's enrollment.
type bareHook struct {
	mochi.HookBase
	srv      *mochi.Server
	ca       *bareCA
	answered *atomic.Int64 // enrollments answered
	online   *atomic.Int64 // sessions established and not ended
}

func (h *bareHook) ID() string { return "bare" }

func (h *bareHook) Provides(b byte) bool {
	return slices.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish,
		mochi.OnSessionEstablished, mochi.OnDisconnect}, b)
}

func (h *bareHook) OnSessionEstablished(*mochi.Client, packets.Packet) { h.online.Add(1) }

func (h *bareHook) OnDisconnect(*mochi.Client, error, bool) { h.online.Add(-1) }

func (h *bareHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (h *bareHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func (h *bareHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	p := topics.Parse(pk.TopicName)
	if cl.Net.Inline || p.Kind != topics.KindEnroll {
		return pk, nil
	}
	reply := wire.Reply{Status: "2.01"}
	resp, err := h.ca.enrollResponse(pk.Payload)
	if err != nil {
		reply = wire.Reply{Status: "4.00", Error: &wire.Error{Code: "bad_request", Message: err.Error()}}
	} else {
		reply.Enrollment = resp
	}
	body, err := wire.Marshal(wire.CBOR, reply)
	if err == nil {
		err = h.srv.Publish(topics.Result(p.ClientID), body, false, 0)
	}
	if err == nil && resp != nil {
		h.answered.Add(1)
	}
	return pk, nil
}

// onlineMemory is what a server holds for each device online, in bytes
// (goroutines in number), against the same figures before they came.
type onlineMemory struct {
	stacks, scannedStacks, heap, rss, goroutines float64
}

// memoryNow collects three times (a goroutine's stack halves at most once
// a collection) and reads the runtime's and the kernel's figures.
func memoryNow() (onlineMemory, error) {
	for range 3 {
		runtime.GC()
	}
	s := []metrics.Sample{{Name: "/memory/classes/heap/stacks:bytes"}, {Name: "/gc/scan/stack:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/sched/goroutines:goroutines"}}
	metrics.Read(s)
	m := onlineMemory{stacks: float64(s[0].Value.Uint64()), scannedStacks: float64(s[1].Value.Uint64()),
		heap: float64(s[2].Value.Uint64()), goroutines: float64(s[3].Value.Uint64())}
	rss, err := floor.ProcessRSS(os.Getpid())
	m.rss = float64(rss)
	return m, err
}

// bareOnline enrolls n devices at the bare MQTT server, keeps them online
// over mutual TLS (each subscribed to its config and lease topics) and
// returns what the server holds per online device, and the process's RSS
// with them online.
func bareOnline(dir string, n int) (per onlineMemory, rss float64, err error) {
	ca, rootFile, err := newBareSetup(dir)
	if err != nil {
		return per, 0, err
	}
	m, err := startBareMQTT(ca)
	if err != nil {
		return per, 0, err
	}
	defer m.stop()
	before, err := memoryNow()
	if err != nil {
		return per, 0, err
	}
	cmd, err := devicesCommand(rootFile, m.addr, n, "mqtt", envBareOnline+"=1")
	if err != nil {
		return per, 0, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return per, 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return per, 0, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return per, 0, err
	}
	defer func() {
		_ = stdin.Close()
		if werr := cmd.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("devices: %w: %s", werr, strings.TrimSpace(stderr.String()))
		}
	}()
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && lines.Text() != "online" {
	}
	if lines.Text() != "online" {
		_ = cmd.Process.Kill()
		return per, 0, fmt.Errorf("devices did not come online: %s", strings.TrimSpace(stderr.String()))
	}
	// The enrollments' own sessions may still be ending.
	for deadline := time.Now().Add(10 * time.Second); m.hook.online.Load() != int64(n); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return per, 0, fmt.Errorf("%d sessions online, want %d", m.hook.online.Load(), n)
		}
	}
	after, err := memoryNow()
	if err != nil {
		return per, 0, err
	}
	d := float64(n)
	per = onlineMemory{stacks: (after.stacks - before.stacks) / d, scannedStacks: (after.scannedStacks - before.scannedStacks) / d,
		heap: (after.heap - before.heap) / d, rss: (after.rss - before.rss) / d, goroutines: (after.goroutines - before.goroutines) / d}
	return per, after.rss, nil
}

// TestBareMQTTOnline keeps a few devices online at the bare MQTT server:
// they enroll, open their mutual-TLS sessions and stay; the server holds
// a read and a write goroutine for each, and memory.
func TestBareMQTTOnline(t *testing.T) {
	per, rss, err := bareOnline(t.TempDir(), 50)
	if err != nil {
		t.Fatal(err)
	}
	if per.goroutines < 1.9 || per.goroutines > 2.1 {
		t.Errorf("%.2f goroutines per online device, want mochi's 2", per.goroutines)
	}
	if per.stacks <= 0 || per.heap <= 0 || rss <= 0 {
		t.Errorf("per device: stacks %.0f, heap %.0f bytes; RSS %.0f", per.stacks, per.heap, rss)
	}
	t.Logf("per online device: %.1f goroutines, stacks %.1f KB (%.1f KB in use), heap %.1f KB, RSS %.1f KB",
		per.goroutines, per.stacks/1024, per.scannedStacks/1024, per.heap/1024, per.rss/1024)
}

// BenchmarkBareMQTTOnline is the memory target's bare transport (issue
// 17): b.N devices online over mutual TLS on mochi with nothing of
// provisiond's, what the server holds per device and its RSS. Run it with
// -benchtime 10000x, as make bench does, beside make soak.
func BenchmarkBareMQTTOnline(b *testing.B) {
	defer gcheadroom.Start(64<<20, 100).Stop()
	per, rss, err := bareOnline(b.TempDir(), b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(per.goroutines, "goroutines/device")
	b.ReportMetric(per.stacks/1024, "stack-KB/device")
	b.ReportMetric(per.scannedStacks/1024, "stack-in-use-KB/device")
	b.ReportMetric(per.heap/1024, "heap-KB/device")
	b.ReportMetric(per.rss/1024, "RSS-KB/device")
	b.ReportMetric(rss/(1<<20), "RSS-MB")
}
