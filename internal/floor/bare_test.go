//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

package floor_test

// The bare transport: what go-coap and pion (the fixed choices for CoAP
// over DTLS) cost a server per enrollment around the public-key floor,
// with nothing of provisiond's in the way. The server here does only what
// any enrollment server on these libraries must: the DTLS handshake with
// provisiond's configuration, the CoAP exchange (the answer goes in two
// Block2 blocks, as provisiond's does), the CBOR request and answer, the
// CSR's check and the certificate's signature by an intermediate. It has
// no inventory, no claim-token check, no IP lease and no audit. The
// devices are the simulator's, in a process of their own, so that this
// process's CPU time is the server's alone.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/provisiond/provisiond/internal/floor"
	"github.com/provisiond/provisiond/internal/gcheadroom"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/coap"
	"github.com/provisiond/provisiond/transport/wire"
)

// The devices' process is this test binary again, told so by these.
const (
	envBareAddr = "FLOOR_BARE_DEVICES_ADDR"
	envBareRoot = "FLOOR_BARE_DEVICES_ROOT"
	envBareN    = "FLOOR_BARE_DEVICES_N"
	envBareOver = "FLOOR_BARE_DEVICES_TRANSPORT"
	// envBareOnline keeps MQTT devices online after they enroll.
	envBareOnline = "FLOOR_BARE_DEVICES_ONLINE"
)

// The bare servers, by the devsim transport their devices enroll over,
// and the scheme of the devices' endpoint.
var bareServers = map[string]struct {
	scheme string
	serve  func(*bareCA) (addr string, stop func(), answered *atomic.Int64, err error)
}{
	"coap": {"coaps", serveBare}, "mqtt": {"mqtts", serveBareMQTT}, "est": {"https", serveBareEST},
}

func TestMain(m *testing.M) {
	if addr := os.Getenv(envBareAddr); addr != "" {
		if err := bareDevices(addr); err != nil {
			fmt.Fprintln(os.Stderr, "bare devices:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bareCA is a root, an intermediate that signs device certificates, and
// the server's certificate, shaped as provisiond's embedded CA makes them
// (P-256 throughout; the root and intermediate are pki/mfr's).
type bareCA struct {
	rootPEM    []byte
	root       *x509.Certificate
	inter      *x509.Certificate
	interKey   crypto.Signer
	serverCert tls.Certificate
}

func newBareCA() (*bareCA, error) {
	root, err := mfr.New("provisiond Root CA")
	if err != nil {
		return nil, err
	}
	inter, err := root.Intermediate("provisiond Intermediate CA")
	if err != nil {
		return nil, err
	}
	serverKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(3),
		Subject: pkix.Name{CommonName: "localhost"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		inter.Cert, &serverKey.PublicKey, inter.Key)
	if err != nil {
		return nil, err
	}
	return &bareCA{
		rootPEM: root.CertPEM(), root: root.Cert, inter: inter.Cert, interKey: inter.Key,
		serverCert: tls.Certificate{Certificate: [][]byte{der, inter.Cert.Raw}, PrivateKey: serverKey},
	}, nil
}

// issue checks a CSR and signs a certificate like provisiond's default
// (the device's UUID as common name and URI, its serial, clientAuth) with
// the intermediate.
func (ca *bareCA) issue(csrDER []byte, serial string) (id uuid.UUID, der []byte, err error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return id, nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return id, nil, err
	}
	id = uuid.New()
	sn := make([]byte, 16)
	if _, err := rand.Read(sn); err != nil {
		return id, nil, err
	}
	now := time.Now().Truncate(time.Second)
	der, err = x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: new(big.Int).SetBytes(sn),
		Subject:      pkix.Name{CommonName: id.String(), SerialNumber: serial},
		URIs:         []*url.URL{{Scheme: "urn", Opaque: "uuid:" + id.String()}},
		NotBefore:    now.Add(-time.Minute), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca.inter, csr.PublicKey, ca.interKey)
	return id, der, err
}

// config is the Wi-Fi, network and lease part of every answer.
func bareConfig(id uuid.UUID) wire.DeviceConfig {
	return wire.DeviceConfig{DeviceID: id.String(), ConfigVersion: 1,
		WiFi:    wire.WiFi{SSID: "Big", Security: "wpa3-sae", Passphrase: "big-site-pass"},
		Network: wire.Network{Address: "10.128.0.17", PrefixLen: 14, Gateway: "10.128.0.1", DNS: []string{"10.128.0.1"}},
		Lease:   wire.Lease{Address: "10.128.0.17", ExpiresAt: time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)},
	}
}

// enrollResponse is the bare servers' answer to a CBOR enrollment request.
func (ca *bareCA) enrollResponse(body []byte) (*wire.EnrollResponse, error) {
	var req wire.EnrollRequest
	if err := wire.Unmarshal(wire.CBOR, body, &req); err != nil {
		return nil, err
	}
	id, der, err := ca.issue(req.CSR, req.Serial)
	if err != nil {
		return nil, err
	}
	cfg := bareConfig(id)
	return &wire.EnrollResponse{
		DeviceID: cfg.DeviceID, Certificate: wire.Chain{der, ca.inter.Raw}, CA: ca.root.Raw,
		WiFi: cfg.WiFi, Network: cfg.Network, Lease: cfg.Lease, ConfigVersion: cfg.ConfigVersion,
	}, nil
}

// enroll is the bare CoAP server's answer to POST /enroll.
func (ca *bareCA) enroll(body []byte) ([]byte, error) {
	r, err := ca.enrollResponse(body)
	if err != nil {
		return nil, err
	}
	return wire.Marshal(wire.CBOR, r)
}

// serveBare starts the bare server on a loopback port: pion with
// provisiond's DTLS configuration, go-coap's server and router.
func serveBare(ca *bareCA) (addr string, stop func(), answered *atomic.Int64, err error) {
	cfg := &piondtls.Config{
		Certificates:         []tls.Certificate{ca.serverCert},
		CipherSuites:         coap.CipherSuites,
		ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret,
		ClientAuth:           piondtls.RequestClientCert,
	}
	l, err := coapnet.NewDTLSListener("udp", "127.0.0.1:0", cfg)
	if err != nil {
		return "", nil, nil, err
	}
	answered = new(atomic.Int64)
	r := mux.NewRouter()
	_ = r.Handle("/enroll", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) {
		var body []byte
		var err error
		if m.Body() != nil {
			body, err = io.ReadAll(io.LimitReader(m.Body(), wire.MaxRequestBytes))
		}
		var out []byte
		if err == nil {
			out, err = ca.enroll(body)
		}
		if err != nil {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, strings.NewReader(err.Error()))
			return
		}
		answered.Add(1)
		_ = w.SetResponse(codes.Created, message.AppCBOR, bytes.NewReader(out))
	}))
	srv := coapdtls.NewServer(options.WithMux(r), options.WithErrors(func(error) {}))
	done := make(chan struct{})
	go func() { _ = srv.Serve(l); close(done) }()
	return l.Addr().String(), func() { srv.Stop(); <-done }, answered, nil
}

// bareDevices is the devices' process: n simulated devices enroll at the
// address, 64 at a time, as devsim's storms do, over CoAP and DTLS, over
// MQTT (CBOR, as devsim's default) or over EST (then reading their config
// over mutual TLS); it prints its own CPU time. Told to stay online (MQTT),
// every device then opens its mutual-TLS session and subscribes to its
// config and lease topics, as devsim's soak does; the process prints
// "online" and keeps the sessions until its standard input closes.
func bareDevices(addr string) error {
	transport := os.Getenv(envBareOver)
	bare, ok := bareServers[transport]
	if !ok {
		return fmt.Errorf("no bare server for transport %q", transport)
	}
	endpoint := bare.scheme + "://" + addr
	root, err := os.ReadFile(os.Getenv(envBareRoot))
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(os.Getenv(envBareN))
	if err != nil {
		return err
	}
	devs := make([]*simulator.Device, n)
	err = each(n, func(ctx context.Context, i int) error {
		d, err := simulator.NewDevice(wire.Bundle{Serial: fmt.Sprintf("BARE-%07d", i+1), ClaimToken: "unused",
			RootCA: string(root), Endpoints: []string{endpoint}})
		if err != nil {
			return err
		}
		devs[i] = d
		switch transport {
		case "est":
			_, err = d.EnrollEST(ctx, simulator.ESTOptions{})
		case "mqtt":
			_, err = d.EnrollMQTT(ctx, simulator.MQTTOptions{Format: wire.CBOR})
		default:
			_, err = d.Enroll(ctx, simulator.EnrollOptions{})
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("enrollments: %w", err)
	}
	fmt.Println(floor.ProcessCPU().Nanoseconds())
	if os.Getenv(envBareOnline) == "" {
		return nil
	}
	sessions := make([]*simulator.Session, n)
	defer func() {
		for _, s := range sessions {
			if s != nil {
				s.Close()
			}
		}
	}()
	err = each(n, func(ctx context.Context, i int) (err error) {
		sessions[i], err = devs[i].ConnectMQTT(ctx, simulator.MQTTOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("sessions: %w", err)
	}
	fmt.Println("online")
	_, err = io.Copy(io.Discard, os.Stdin)
	return err
}

// each runs fn for 0..n-1, 64 at a time, each with 30 s, and reports how
// many failed and the first error.
func each(n int, fn func(ctx context.Context, i int) error) error {
	var next, failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := fn(ctx, int(i))
				cancel()
				if err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d failed, the first: %w", f, n, firstErr)
	}
	return nil
}

// newBareSetup makes a bare CA and writes its root, which the devices are
// flashed with, into dir.
func newBareSetup(dir string) (ca *bareCA, rootFile string, err error) {
	if ca, err = newBareCA(); err != nil {
		return nil, "", err
	}
	rootFile = filepath.Join(dir, "root.pem")
	return ca, rootFile, os.WriteFile(rootFile, ca.rootPEM, 0o600)
}

// devicesCommand is the devices' process (this test binary again) for n
// devices enrolling at addr over the transport, with more of its
// environment in env.
func devicesCommand(rootFile, addr string, n int, transport string, env ...string) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), envBareAddr+"="+addr, envBareRoot+"="+rootFile, envBareN+"="+strconv.Itoa(n),
		envBareOver+"="+transport), env...)
	return cmd, nil
}

// bareRun enrolls n devices at the bare server for the transport and
// returns the server's and the devices' CPU time per enrollment.
func bareRun(dir string, n int, transport string) (server, devices time.Duration, err error) {
	bare, ok := bareServers[transport]
	if !ok {
		return 0, 0, fmt.Errorf("no bare server for transport %q", transport)
	}
	ca, rootFile, err := newBareSetup(dir)
	if err != nil {
		return 0, 0, err
	}
	addr, stop, answered, err := bare.serve(ca)
	if err != nil {
		return 0, 0, err
	}
	defer stop()
	cmd, err := devicesCommand(rootFile, addr, n, transport)
	if err != nil {
		return 0, 0, err
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	before := floor.ProcessCPU()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("devices: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	server = (floor.ProcessCPU() - before) / time.Duration(n)
	if got := answered.Load(); got != int64(n) {
		return 0, 0, fmt.Errorf("the server answered %d enrollments, want %d", got, n)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("devices' CPU time %q: %w", out.String(), err)
	}
	return server, time.Duration(ns) / time.Duration(n), nil
}

// TestBareTransport runs the bare servers with a few devices: each gets a
// certificate that verifies to the root (over EST, then reads its config
// with it), and both sides' CPU is counted.
func TestBareTransport(t *testing.T) {
	for _, transport := range []string{"coap", "mqtt", "est"} {
		server, devices, err := bareRun(t.TempDir(), 20, transport)
		if err != nil {
			t.Fatalf("%s: %v", transport, err)
		}
		if server <= 0 || devices <= 0 {
			t.Fatalf("%s: CPU per enrollment: server %v, devices %v", transport, server, devices)
		}
		t.Logf("%s: CPU per enrollment: server %v, devices %v", transport, server, devices)
	}
}

// TestBareServerRefusesBadCSR checks the bare server does the CSR check it
// is meant to measure: a request whose CSR signature is broken is refused.
func TestBareServerRefusesBadCSR(t *testing.T) {
	ca, err := newBareCA()
	if err != nil {
		t.Fatal(err)
	}
	d, err := simulator.NewDevice(wire.Bundle{Serial: "BARE-1", ClaimToken: "unused", RootCA: string(ca.rootPEM)})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := d.CSR()
	if err != nil {
		t.Fatal(err)
	}
	csr[len(csr)-3] ^= 0xff // inside the signature
	body, err := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: "BARE-1", CSR: csr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.enroll(body); err == nil {
		t.Fatal("a CSR with a broken signature was signed")
	}
	var good wire.EnrollResponse
	csr[len(csr)-3] ^= 0xff
	body, _ = wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: "BARE-1", CSR: csr})
	out, err := ca.enroll(body)
	if err == nil {
		err = wire.Unmarshal(wire.CBOR, out, &good)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(out) <= 1024 {
		t.Fatalf("the answer is %d bytes: provisiond's takes two 1,024-byte blocks, so must this one", len(out))
	}
	if len(good.Certificate) != 2 {
		t.Fatalf("answer chain of %d certificates", len(good.Certificate))
	}
}

// BenchmarkBareDTLS is the bare transport's CPU per enrollment against the
// public-key floor measured in the same run (docs/performance.md, issue
// 17): what go-coap and pion cost before provisiond does anything. Run it
// with -benchtime 5000x, as make bench does. Each runs twice: on Go's
// default collector (GOGC=100), and with provisiond's default
// --gc-headroom, so that provisiond is compared with the libraries on the
// same runtime setting.
func BenchmarkBareDTLS(b *testing.B) { benchBare(b, "coap") }

// BenchmarkBareMQTT is the same for MQTT over TLS: mochi's broker on Go's
// crypto/tls, against the same floor as DTLS (the TLS handshake's
// signature stands for the ServerKeyExchange's).
func BenchmarkBareMQTT(b *testing.B) { benchBare(b, "mqtt") }

// BenchmarkBareEST is the same for EST over Go's crypto/tls and net/http,
// the device then reading its config over mutual TLS, against the floor
// with that second handshake.
func BenchmarkBareEST(b *testing.B) { benchBare(b, "est") }

func benchBare(b *testing.B, transport string) {
	b.Run("gogc=100", func(b *testing.B) { benchBareGC(b, transport, 0) })
	b.Run("gc-headroom=64MiB", func(b *testing.B) { benchBareGC(b, transport, 64<<20) })
}

func benchBareGC(b *testing.B, transport string, headroom uint64) {
	defer gcheadroom.Start(headroom, 100).Stop()
	fl, err := floor.Measure(2*time.Second, transport == "est")
	if err != nil {
		b.Fatal(err)
	}
	server, devices, err := bareRun(b.TempDir(), b.N, transport)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(fl.Microseconds()), "floor-µs")
	b.ReportMetric(float64(server.Microseconds()), "server-µs/enroll")
	b.ReportMetric(float64(server)/float64(fl), "server/floor")
	b.ReportMetric(float64(devices.Microseconds()), "devices-µs/enroll")
}
