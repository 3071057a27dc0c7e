package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	"github.com/provisiond/provisiond/pki/profile"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

// mqttDial connects a raw client to the embedded broker; it returns the
// connect error instead of failing.
func mqttDial(t *testing.T, env *servertest.Env, clientID string, cert *tls.Certificate) (paho.Client, error) {
	t.Helper()
	return mqttDialURL(t, env.Server.MQTTAddr(), clientID, env, cert)
}

func mqttDialURL(t *testing.T, addr, clientID string, env *servertest.Env, cert *tls.Certificate) (paho.Client, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	tc := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(clientID).
		SetTLSConfig(tc).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errTimeout
	}
	if tok.Error() != nil {
		return nil, tok.Error()
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

var errTimeout = errors.New("mqtt connect: no answer within 10s")

// subAllowed reports whether the broker granted a subscription.
func subAllowed(t *testing.T, c paho.Client, filter string) bool {
	t.Helper()
	tok := c.Subscribe(filter, 1, func(paho.Client, paho.Message) {})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return tok.(*paho.SubscribeToken).Result()[filter] < 0x80
}

func deviceCert(t *testing.T, ca *pki.CA, key *ecdsa.PrivateKey, id uuid.UUID) *tls.Certificate {
	t.Helper()
	csr, _ := x509.ParseCertificateRequest(csrFor(t, key))
	leaf, err := ca.IssueDevice(csr, profile.Device{ID: id, Serial: "X"})
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Intermediate().Raw}, PrivateKey: key, Leaf: leaf}
}

func TestMQTTAccessRules(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(2, "hq")
	var devs [2]*simulator.Device
	for i, b := range bundles {
		devs[i], _ = simulator.NewDevice(b)
		if _, err := devs[i].EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a, b := devs[0], devs[1]
	aID, bID := a.Enrollment.DeviceID, b.Enrollment.DeviceID
	aCert, _ := a.TLSCertificate()

	t.Run("connect", func(t *testing.T) {
		other := servertest.Start(t)
		cases := []struct {
			name, clientID string
			cert           *tls.Certificate
			ok             bool
		}{
			{"bootstrap client with a nonce ID (control)", simulator.Nonce(), nil, true},
			{"device with its own certificate (control)", aID, aCert, true},
			{"no certificate, ID not boot-<nonce>", "my-device", nil, false},
			{"no certificate, short nonce", "boot-abc", nil, false},
			{"no certificate, a device's ID (session takeover)", bID, nil, false},
			{"certificate, another device's ID", bID, aCert, false},
			{"certificate for a device not in the inventory", "", deviceCert(t, env.Server.CA(), mustKey(t), uuid.Nil), false},
			{"superseded certificate of a real device", bID, deviceCert(t, env.Server.CA(), mustKey(t), uuid.MustParse(bID)), false},
			{"certificate from another CA", aID, deviceCert(t, other.Server.CA(), mustKey(t), uuid.MustParse(aID)), false},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				id := c.clientID
				if id == "" && c.cert != nil {
					id = strings.TrimPrefix(c.cert.Leaf.URIs[0].String(), "urn:uuid:")
				}
				_, err := mqttDial(t, env, id, c.cert)
				if (err == nil) != c.ok {
					t.Errorf("connect as %q: err %v, want ok=%v", id, err, c.ok)
				}
			})
		}
	})

	t.Run("subscribe", func(t *testing.T) {
		boot := simulator.Nonce()
		bc, err := mqttDial(t, env, boot, nil)
		if err != nil {
			t.Fatal(err)
		}
		dc, err := mqttDial(t, env, aID, aCert)
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name   string
			c      paho.Client
			filter string
			ok     bool
		}{
			{"bootstrap: own result topic (control)", bc, topics.Result(boot), true},
			{"bootstrap: everything", bc, "#", false},
			{"bootstrap: all results", bc, "bootstrap/+/result", false},
			{"bootstrap: another client's result", bc, topics.Result(simulator.Nonce()), false},
			{"bootstrap: own subtree by wildcard", bc, "bootstrap/" + boot + "/#", false},
			{"bootstrap: a device's config", bc, topics.Config(aID), false},
			{"bootstrap: $SYS", bc, "$SYS/#", false},
			{"device: own config (control)", dc, topics.Config(aID), true},
			{"device: own subtree (control)", dc, "devices/" + aID + "/#", true},
			{"device: another device's config", dc, topics.Config(bID), false},
			{"device: every device's config", dc, "devices/+/config", false},
			{"device: everything", dc, "#", false},
			{"device: bootstrap results", dc, "bootstrap/+/result", false},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if got := subAllowed(t, c.c, c.filter); got != c.ok {
					t.Errorf("subscribe %q allowed=%v, want %v", c.filter, got, c.ok)
				}
			})
		}
	})

	t.Run("publish", func(t *testing.T) {
		dc, err := mqttDial(t, env, aID, aCert)
		if err != nil {
			t.Fatal(err)
		}
		bc, err := mqttDial(t, env, simulator.Nonce(), nil)
		if err != nil {
			t.Fatal(err)
		}
		victim := env.Mint(1, "hq")[0]
		before, _ := env.Server.Store().Digest(context.Background())
		// A reports B's state, and writes over its own server-owned topics.
		pub := func(c paho.Client, topic string, retain bool, body []byte) {
			tok := c.Publish(topic, 1, retain, body)
			tok.WaitTimeout(5 * time.Second)
		}
		state, _ := wire.Marshal(wire.JSON, wire.StateReport{ConfigVersion: 1, Health: "forged"})
		pub(dc, topics.State(bID), false, state)
		pub(dc, topics.Config(aID), true, []byte(`{"device_id":"forged"}`))
		pub(dc, topics.Lease(aID), false, []byte(`{"status":"2.04"}`))
		// A bootstrap client publishes on another client's request topic.
		req, _ := wire.Marshal(wire.JSON, wire.EnrollRequest{Serial: victim.Serial, ClaimToken: victim.ClaimToken, CSR: csrFor(t, mustKey(t))})
		pub(bc, topics.Enroll(simulator.Nonce(), wire.JSON), false, req)
		// The broker drops a client at its first forbidden packet, once it
		// has refused it: both connections ending is the signal that the
		// forged packets were handled (refused), not a fixed wait.
		waitFor(t, func() bool { return !dc.IsConnectionOpen() && !bc.IsConnectionOpen() }, "the broker to drop both publishers")
		if after, _ := env.Server.Store().Digest(context.Background()); after != before {
			t.Error("a publish the rules forbid changed the inventory")
		}
		// A's own config topic still holds the server's config.
		s, err := a.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cfg, err := s.Config(ctxT(t))
		if err != nil || cfg.DeviceID != aID {
			t.Errorf("config after a forged publish: %+v %v", cfg, err)
		}
	})
}
