package coap

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapnet "github.com/plgd-dev/go-coap/v3/net"

	"github.com/provisiond/provisiond/internal/handshake"
)

// gateRig is a real DTLS listener on loopback behind a gate, with a
// self-signed server certificate made for the test.
type gateRig struct {
	l    *gatedListener
	gate *handshake.Gate
	pool *x509.CertPool
	addr *net.UDPAddr
}

func newGateRig(t *testing.T, slots int, maxWait, hold time.Duration) *gateRig {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gate test"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:   time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	inner, err := coapnet.NewDTLSListener("udp", "127.0.0.1:0", &piondtls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		CipherSuites: CipherSuites,
	})
	if err != nil {
		t.Fatal(err)
	}
	gate := handshake.NewGate(slots, maxWait, hold)
	rig := &gateRig{l: &gatedListener{inner: inner, gate: gate}, gate: gate, pool: pool, addr: inner.Addr().(*net.UDPAddr)}
	t.Cleanup(func() { _ = inner.Close() })
	return rig
}

// accept returns the next session, as go-coap would get it.
func (r *gateRig) accept(t *testing.T) *gatedConn {
	t.Helper()
	c, err := r.l.AcceptWithContext(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	gc, ok := c.(*gatedConn)
	if !ok {
		t.Fatalf("accepted %T, want *gatedConn", c)
	}
	t.Cleanup(func() { _ = gc.Close() })
	return gc
}

// dial starts a client handshake in the background; its result arrives on
// the returned channel.
func (r *gateRig) dial(t *testing.T, timeout time.Duration) <-chan error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		c, err := piondtls.Dial("udp", r.addr, &piondtls.Config{RootCAs: r.pool, CipherSuites: CipherSuites})
		if err == nil {
			err = c.HandshakeContext(ctx)
			t.Cleanup(func() { _ = c.Close() })
		}
		done <- err
	}()
	return done
}

func serverHandshake(c *gatedConn) <-chan error {
	done := make(chan error, 1)
	go func() { done <- c.HandshakeContext(context.Background()) }()
	return done
}

func wait(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no result after 20s", what)
		return nil
	}
}

func TestHandshakeGate(t *testing.T) {
	t.Run("bootstrap session holds its slot until enrolled", func(t *testing.T) {
		r := newGateRig(t, 1, 10*time.Second, time.Minute)
		c1done := r.dial(t, 15*time.Second)
		s1 := r.accept(t)
		if err := wait(t, "server 1", serverHandshake(s1)); err != nil {
			t.Fatalf("first handshake: %v", err)
		}
		if err := wait(t, "client 1", c1done); err != nil {
			t.Fatalf("first client: %v", err)
		}
		// go-coap calls HandshakeContext again before each read: that must
		// not take another slot (it would deadlock with one slot).
		if err := wait(t, "server 1 again", serverHandshake(s1)); err != nil {
			t.Fatalf("repeated handshake call: %v", err)
		}
		if n := r.gate.Stats().InProgress; n != 1 {
			t.Fatalf("slots in use after the bootstrap handshake = %d, want 1 (held until enrolled)", n)
		}

		c2done := r.dial(t, 15*time.Second)
		s2 := r.accept(t)
		s2done := serverHandshake(s2)
		select {
		case err := <-s2done:
			t.Fatalf("second handshake ran while the only slot was held: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
		if w := r.gate.Stats().Waiting; w != 1 {
			t.Fatalf("waiting = %d, want 1", w)
		}
		enrolled(s1)
		enrolled(s1) // a second answer on the same session gives nothing back twice
		if err := wait(t, "server 2", s2done); err != nil {
			t.Fatalf("second handshake after the first enrolled: %v", err)
		}
		if err := wait(t, "client 2", c2done); err != nil {
			t.Fatalf("second client: %v", err)
		}
		_ = s1.Close()
		if n := r.gate.Stats().InProgress; n != 1 {
			t.Fatalf("slots in use = %d, want 1 (the second session's)", n)
		}
		_ = s2.Close()
		if n := r.gate.Stats().InProgress; n != 0 {
			t.Fatalf("slots in use after both closed = %d, want 0", n)
		}
		if d := r.gate.Stats().Dropped; d != 0 {
			t.Fatalf("dropped = %d, want 0", d)
		}
	})

	t.Run("a session that waits too long is dropped", func(t *testing.T) {
		r := newGateRig(t, 1, 200*time.Millisecond, time.Minute)
		c1done := r.dial(t, 15*time.Second)
		s1 := r.accept(t)
		if err := wait(t, "server 1", serverHandshake(s1)); err != nil {
			t.Fatal(err)
		}
		if err := wait(t, "client 1", c1done); err != nil {
			t.Fatal(err)
		}
		// s1 holds the slot (bootstrap, not enrolled yet): the next waits
		// 200 ms and is dropped.
		r.dial(t, 2*time.Second)
		s2 := r.accept(t)
		err := wait(t, "server 2", serverHandshake(s2))
		if !errors.Is(err, handshake.ErrBusy) {
			t.Fatalf("second handshake: %v, want handshake.ErrBusy", err)
		}
		if d := r.gate.Stats().Dropped; d != 1 {
			t.Fatalf("dropped = %d, want 1", d)
		}
		_ = s2.Close() // a dropped session never held a slot
		if n := r.gate.Stats().InProgress; n != 1 {
			t.Fatalf("slots in use = %d, want 1 (s1's)", n)
		}
		_ = s1.Close()
		if n := r.gate.Stats().InProgress; n != 0 {
			t.Fatalf("slots in use after close = %d, want 0", n)
		}
	})

	t.Run("an unused hold expires", func(t *testing.T) {
		r := newGateRig(t, 1, time.Minute, 300*time.Millisecond)
		c1done := r.dial(t, 15*time.Second)
		s1 := r.accept(t)
		if err := wait(t, "server 1", serverHandshake(s1)); err != nil {
			t.Fatal(err)
		}
		if err := wait(t, "client 1", c1done); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for r.gate.Stats().InProgress != 0 {
			if time.Now().After(deadline) {
				t.Fatal("a bootstrap session that never enrolled kept its slot")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}
