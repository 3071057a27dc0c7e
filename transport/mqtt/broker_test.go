package mqtt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/wire"
)

// testCA issues the broker's and one device's certificates.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pool   *x509.CertPool
	serial int64
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool, serial: 1}
}

func (ca *testCA) issue(t *testing.T, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ca.serial++
	tmpl.SerialNumber = big.NewInt(ca.serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// configOps hands out one config per device, its version set by the test.
type configOps struct {
	mu      sync.Mutex
	version uint64
}

func (o *configOps) Config(context.Context, uuid.UUID) (enroll.DeviceConfig, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return enroll.DeviceConfig{Version: o.version, WiFi: enroll.WiFi{SSID: "test"}}, nil
}

func (o *configOps) ReportState(context.Context, uuid.UUID, enroll.StateReport, string) error {
	return nil
}

// brokerEnv is a broker on loopback with one enrolled device.
type brokerEnv struct {
	b      *Broker
	ops    *configOps
	id     uuid.UUID
	client *tls.Config
}

func startBroker(t *testing.T, authorize Authorizer) *brokerEnv {
	t.Helper()
	ca := newTestCA(t)
	server := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "broker"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	id := uuid.New()
	u, _ := url.Parse("urn:uuid:" + id.String())
	device := ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: id.String()}, URIs: []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ops := &configOps{version: 1}
	b := NewBroker(BrokerConfig{Addr: "127.0.0.1:0", ClientCAs: ca.pool, Authorize: authorize,
		Certificate: func() (*tls.Certificate, error) { return &server, nil }}, NewHandler(nil, ops, nil, log), log)
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	return &brokerEnv{b: b, ops: ops, id: id, client: &tls.Config{RootCAs: ca.pool, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{device}, MinVersion: tls.VersionTLS12}}
}

// session is a device's connection, with what it received.
type session struct {
	c       paho.Client
	configs chan wire.DeviceConfig
	lost    chan error
}

func (e *brokerEnv) connect(t *testing.T) (*session, error) {
	t.Helper()
	s := &session{configs: make(chan wire.DeviceConfig, 8), lost: make(chan error, 1)}
	opts := paho.NewClientOptions().AddBroker("ssl://" + e.b.Addr()).SetClientID(e.id.String()).
		SetTLSConfig(e.client).SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ paho.Client, err error) { s.lost <- err })
	s.c = paho.NewClient(opts)
	t.Cleanup(func() { s.c.Disconnect(0) }) // before the broker's shutdown, which waits for its sessions
	if tok := s.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect: %v", tok.Error())
	}
	tok := s.c.Subscribe(topics.Config(e.id.String()), 1, func(_ paho.Client, m paho.Message) {
		var cfg wire.DeviceConfig
		if len(m.Payload()) > 0 && wire.Unmarshal(wire.JSON, m.Payload(), &cfg) == nil {
			s.configs <- cfg
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	if q := tok.(*paho.SubscribeToken).Result()[topics.Config(e.id.String())]; q >= 0x80 {
		return nil, fmt.Errorf("subscribe refused: %#x", q)
	}
	return s, nil
}

func (s *session) config(t *testing.T, version uint64) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case cfg := <-s.configs:
			if cfg.ConfigVersion == version {
				return
			}
		case <-deadline:
			t.Fatalf("config version %d never arrived", version)
		}
	}
}

// holdEnd stops mochi, once, between the two steps by which it forgets a
// clean session that ended (topic index, then client list): the window in
// which a device that reconnects at once used to lose its new session.
type holdEnd struct {
	mochi.HookBase
	mu      sync.Mutex
	target  *mochi.Client
	entered chan struct{}
	release chan struct{}
}

func (h *holdEnd) ID() string            { return "test-hold-end" }
func (h *holdEnd) Provides(b byte) bool  { return b == mochi.OnUnsubscribed }
func (h *holdEnd) hold(cl *mochi.Client) { h.mu.Lock(); h.target = cl; h.mu.Unlock() }
func (h *holdEnd) OnUnsubscribed(cl *mochi.Client, pk packets.Packet) {
	h.mu.Lock()
	mine := cl == h.target && len(pk.Filters) > 0
	if mine {
		h.target = nil
	}
	h.mu.Unlock()
	if mine {
		close(h.entered)
		select {
		case <-h.release:
		case <-time.After(10 * time.Second):
		}
	}
}

// A device closes its session and reconnects at once (as after a
// certificate renewal) while mochi is still forgetting the old one. The new
// session must still get pushes and still be cut by a revocation.
func TestReconnectWhileTheOldSessionEnds(t *testing.T) {
	e := startBroker(t, nil)
	hold := &holdEnd{entered: make(chan struct{}), release: make(chan struct{})}
	if err := e.b.srv.AddHook(hold, nil); err != nil {
		t.Fatal(err)
	}
	old, err := e.connect(t)
	if err != nil {
		t.Fatal(err)
	}
	old.config(t, 1)
	cl, ok := e.b.srv.Clients.Get(e.id.String())
	if !ok {
		t.Fatal("mochi does not list the first session")
	}
	hold.hold(cl)
	old.c.Disconnect(0)
	select {
	case <-hold.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the first session never ended")
	}
	cur, err := e.connect(t)
	if err != nil {
		t.Fatal(err)
	}
	cur.config(t, 1) // the retained config, at connect
	close(hold.release)

	// mochi now removes the device's client ID from its list, which by then
	// names the new session. Once it is done with the old session, the
	// broker has listed the new one again.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, ending := e.b.access.ending.Load(cl.Net.Conn)
		if !ending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mochi never finished with the first session")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if now, ok := e.b.srv.Clients.Get(e.id.String()); !ok || now == cl {
		t.Fatalf("the new session is not listed (listed: %v)", ok)
	}
	e.ops.mu.Lock()
	e.ops.version = 2
	e.ops.mu.Unlock()
	e.b.handler.PushConfig(context.Background(), e.id)
	cur.config(t, 2)

	e.b.CutDevice(e.id)
	select {
	case <-cur.lost:
	case <-time.After(5 * time.Second):
		t.Fatal("revocation did not cut the new session")
	}
}

// A revocation that commits after CONNECT read the inventory, but before
// mochi listed the client, still cuts the session.
func TestRevocationDuringConnect(t *testing.T) {
	reading := make(chan struct{})
	revoked := make(chan struct{})
	var once sync.Once
	e := startBroker(t, func(context.Context, uuid.UUID, string) error {
		select {
		case <-revoked:
			return errors.New("device revoked")
		default:
		}
		once.Do(func() { // the first CONNECT finds the device in good standing...
			close(reading)
			<-revoked // ...and the revocation commits right after
		})
		return nil
	})
	errc := make(chan error, 1)
	var s *session
	go func() {
		var err error
		s, err = e.connect(t)
		errc <- err
	}()
	select {
	case <-reading:
	case <-time.After(5 * time.Second):
		t.Fatal("CONNECT never reached Authorize")
	}
	e.b.CutDevice(e.id)
	close(revoked)
	if err := <-errc; err != nil {
		return // cut before CONNACK: refused
	}
	select {
	case <-s.lost:
	case <-time.After(3 * time.Second):
		t.Fatal("a session authorized just before its device was revoked stayed open")
	}
}

// TestListenerFailureReported: a listener that stops on its own (not by
// Shutdown) is reported on Err, which is one channel however often it is
// asked for.
func TestListenerFailureReported(t *testing.T) {
	e := startBroker(t, func(context.Context, uuid.UUID, string) error { return nil })
	first, second := e.b.Err(), e.b.Err()
	if first != second {
		t.Fatal("Err hands out a new channel per call")
	}
	e.b.tls.mu.Lock()
	_ = e.b.tls.ln.Close() // the socket fails under the broker
	e.b.tls.mu.Unlock()
	select {
	case err := <-e.b.Err():
		if err == nil || !strings.Contains(err.Error(), "mqtts listener") {
			t.Fatalf("reported %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a failed listener was not reported")
	}

}
