package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestMQTTEnrollAndOperate(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	for _, f := range []wire.Format{wire.JSON, wire.CBOR} {
		t.Run(f.String(), func(t *testing.T) {
			b := env.Mint(1, "hq")[0]
			d, _ := simulator.NewDevice(b)
			res, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{Format: f}) // broker from the bundle's mqtts:// endpoint
			if err != nil {
				t.Fatalf("enroll over MQTT: %v", err)
			}
			if res.WiFi.SSID != "ssid-hq" || res.Network.PrefixLen != 24 {
				t.Errorf("answer %+v", res)
			}
			opensslVerify(t, env, d.PEM())
			stored, _ := env.Server.Store().DeviceBySerial(context.Background(), b.Serial)
			if stored.State != devices.StateProvisioned || stored.Lease == nil || stored.Lease.Addr.String() != res.Network.Address {
				t.Fatalf("stored %+v", stored)
			}
			evs, _ := env.Server.Store().Audit(context.Background(), devices.AuditQuery{Ascending: true, Limit: 1000})
			if last := lastAction(evs, "device.enroll"); last == nil || last.Detail["transport"] != "mqtt" || last.Source == "" {
				t.Errorf("audit event %+v, want transport mqtt with a source", last)
			}

			s, err := d.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
			if err != nil {
				t.Fatalf("operational connect: %v", err)
			}
			defer s.Close()
			cfg, err := s.Config(ctxT(t)) // retained: there before the device subscribed
			if err != nil {
				t.Fatal(err)
			}
			if cfg.DeviceID != res.DeviceID || cfg.WiFi != res.WiFi || cfg.Network.Address != res.Network.Address || cfg.ConfigVersion != res.ConfigVersion {
				t.Errorf("pushed config %+v does not match the enrollment %+v", cfg, res)
			}
			if err := s.ReportState(ctxT(t), wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: "2.0.0", Health: "ok"}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool {
				d, _ := env.Server.Store().DeviceBySerial(context.Background(), b.Serial)
				return d.State == devices.StateActive && d.AppliedConfigVersion == cfg.ConfigVersion && d.FirmwareVersion == "2.0.0" && d.Health == "ok"
			}, "device active after reporting its applied config")

			env.Clock.Advance(2 * time.Second) // lease expiry has one-second resolution
			lease, err := s.RenewLease(ctxT(t))
			if err != nil {
				t.Fatalf("renew over MQTT: %v", err)
			}
			if lease.Lease.Address != res.Lease.Address || !lease.Lease.ExpiresAt.After(res.Lease.ExpiresAt) {
				t.Errorf("renewed %+v, first %+v", lease.Lease, res.Lease)
			}
		})
	}
}

// Errors carry the same codes and messages over MQTT as over CoAP.
func TestMQTTErrorsMatchCoAP(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	for _, c := range []struct {
		name string
		mod  func(*wire.Bundle)
		code string
	}{
		{"wrong token", func(b *wire.Bundle) { b.ClaimToken = "WRONGWRONGWRONGWRONG" }, "unauthorized"},
		{"unknown serial", func(b *wire.Bundle) { b.Serial = "NO-SUCH-DEVICE" }, "unauthorized"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := env.Mint(1, "hq")[0]
			c.mod(&b)
			before, _ := env.Server.Store().Digest(context.Background())
			d1, _ := simulator.NewDevice(b)
			_, errMQTT := d1.EnrollMQTT(ctxT(t), simulator.MQTTOptions{})
			d2, _ := simulator.NewDevice(b)
			_, errCoAP := d2.Enroll(ctxT(t), simulator.EnrollOptions{Format: wire.JSON})
			var em, ec *simulator.Error
			if !asErr(errMQTT, &em) || !asErr(errCoAP, &ec) {
				t.Fatalf("mqtt %v, coap %v", errMQTT, errCoAP)
			}
			if em.Code != ec.Code || em.Body != ec.Body || em.Body.Code != c.code {
				t.Errorf("MQTT %v %+v, CoAP %v %+v, want both %s", em.Code, em.Body, ec.Code, ec.Body, c.code)
			}
			if after, _ := env.Server.Store().Digest(context.Background()); after != before {
				t.Error("a refused enrollment changed the store")
			}
		})
	}
}

func lastAction(evs []devices.AuditEvent, action string) *devices.AuditEvent {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Action == action {
			return &evs[i]
		}
	}
	return nil
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for: %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func asErr(err error, target **simulator.Error) bool { return errors.As(err, target) }

// A mixed fleet: half the devices over CoAP/DTLS, half over MQTT, as devsim --transport mix runs them.
func TestMixedFleet(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/23")
	outs, sum := simulator.Run(ctxT(t), env.Mint(60, "hq"), simulator.RunOptions{Transport: "mix", Concurrency: 20})
	if sum.Enrolled != 60 {
		t.Fatalf("%v", sum)
	}
	evs, _ := env.Server.Store().Audit(context.Background(), devices.AuditQuery{Ascending: true, Limit: 1000})
	by := map[string]int{}
	for _, e := range evs {
		if e.Action == "device.enroll" {
			by[e.Detail["transport"]]++
		}
	}
	if by["coaps"] != 30 || by["mqtt"] != 30 {
		t.Errorf("enrollments by transport %v, want 30 coaps and 30 mqtt (%d outcomes)", by, len(outs))
	}
}

// A revoked device is refused at MQTT CONNECT and at the DTLS handshake.
// (Revocation itself is an operator action of a later issue; here the
// device's state is set in the store.)
func TestRevokedDeviceRefusedAtConnect(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := d.ConnectMQTT(ctxT(t), simulator.MQTTOptions{}) // control: accepted before revocation
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	id := uuid.MustParse(d.Enrollment.DeviceID)
	if _, err := env.Server.Store().UpdateDevice(context.Background(), id, func(x *devices.Device) (*devices.AuditEvent, error) {
		x.State = devices.StateRevoked
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ConnectMQTT(ctxT(t), simulator.MQTTOptions{}); err == nil {
		t.Error("revoked device connected over MQTT")
	}
	if _, err := d.RenewLease(ctxT(t), simulator.EnrollOptions{}); err == nil || simulator.Reason(err) != "transport" {
		t.Errorf("revoked device over DTLS: %v, want the handshake refused", err)
	}
	if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); simulator.Reason(err) != "revoked" {
		t.Errorf("revoked device re-enrolling: %v, want 4.03 revoked", err)
	}
}

func TestInsecureMQTT(t *testing.T) {
	cfg := server.Defaults()
	cfg.DataDir, cfg.MQTTPlainAddr = t.TempDir(), "127.0.0.1:0"
	if _, err := server.Start(context.Background(), cfg, servertest.Logger(t)); err == nil || !strings.Contains(err.Error(), "--insecure-mqtt") {
		t.Fatalf("plain MQTT without the flag: %v", err)
	}
	env := servertest.Start(t, func(c *server.Config) { c.InsecureMQTT, c.MQTTPlainAddr = true, "127.0.0.1:0" })
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{Broker: "mqtt://" + env.Server.MQTTPlainAddr()}); err != nil {
		t.Fatalf("enroll over plain MQTT: %v", err)
	}
}

// Over MQTT too, a bootstrap session holds a handshake slot only until its
// enrollment is answered, not until the device disconnects.
func TestMQTTBootstrapSessionGivesBackItsHandshakeSlot(t *testing.T) {
	env := servertest.Start(t, func(c *server.Config) { c.MaxHandshakes = 1 })
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	id := simulator.Nonce()
	c, err := mqttDial(t, env, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(0)
	if n := env.Server.MQTTHandshakes().InProgress; n != 1 {
		t.Fatalf("slots in use on an open bootstrap session = %d, want 1", n)
	}
	results := make(chan []byte, 1)
	if tok := c.Subscribe(topics.Result(id), 1, func(_ paho.Client, m paho.Message) { results <- m.Payload() }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	body, _ := wire.Marshal(wire.JSON, wire.EnrollRequest{Serial: bundles[0].Serial, ClaimToken: bundles[0].ClaimToken, CSR: csr})
	if tok := c.Publish(topics.Enroll(id, wire.JSON), 1, false, body); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case raw := <-results:
		var r wire.Reply
		if err := wire.Unmarshal(wire.JSON, raw, &r); err != nil || r.Status != "2.01" {
			t.Fatalf("enroll reply %s: %v", raw, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no enrollment reply")
	}
	// Well inside the 5 s after which an unanswered session's slot expires.
	for deadline := time.Now().Add(2 * time.Second); env.Server.MQTTHandshakes().InProgress != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the slot was not given back after the answer (session still open)")
		}
	}
	outs, sum := simulator.Run(ctxT(t), bundles[1:], simulator.RunOptions{Concurrency: 2, Attempts: 1, Transport: "mqtt", Timeout: 4 * time.Second})
	if sum.Enrolled != 2 {
		t.Fatalf("%v: %v", sum, outs[0].Err)
	}
	if h := env.Server.MQTTHandshakes(); h.Dropped != 0 {
		t.Fatalf("handshakes %+v, want none dropped", h)
	}
}
