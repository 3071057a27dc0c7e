package server_test

import (
	"bytes"
	"context"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	"github.com/provisiond/provisiond/internal/testtools"

	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

func freePort(t *testing.T) string {
	_, p, _ := net.SplitHostPort(testtools.FreeAddr(t, "tcp"))
	return p
}

// startMosquitto runs a real Mosquitto with the configuration documented in
// docs/mosquitto/, its certificate issued through provisiond's API.
func startMosquitto(t *testing.T, env *servertest.Env, devPort, bootPort string) {
	t.Helper()
	bin := testtools.Need(t, "mosquitto")
	dir := t.TempDir()
	var res httpapi.ServerCertResponse
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/server-certificates",
		httpapi.ServerCertRequest{Names: []string{"localhost"}, IPs: []string{"127.0.0.1"}}, &res); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"server.pem": res.Certificate, "server.key": res.Key, "ca.pem": res.CA}
	for _, f := range []string{"mosquitto.conf", "acl-devices", "acl-bootstrap"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "docs", "mosquitto", f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = string(b)
	}
	conf := strings.ReplaceAll(files["mosquitto.conf"], "/etc/mosquitto/provisiond/", dir+"/")
	conf = strings.Replace(conf, "listener 8883", "listener "+devPort+" 127.0.0.1", 1)
	conf = strings.Replace(conf, "listener 8884", "listener "+bootPort+" 127.0.0.1", 1)
	// Started as root, Mosquitto drops to the user named here (default
	// "mosquitto", who could not read this test's private directory).
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	files["mosquitto.conf"] = conf + "\npersistence false\nlog_type all\nuser " + me.Username + "\n"
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "mosquitto.conf"))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", logs.String())
		}
	})
	waitFor(t, func() bool {
		c, err := net.Dial("tcp", "127.0.0.1:"+bootPort)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, "mosquitto listening")
}

// TestMosquittoBroker runs bootstrap and the operational channel through a
// real Mosquitto, provisiond consuming requests by shared subscription.
func TestMosquittoBroker(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	devPort, bootPort := freePort(t), freePort(t)
	env := servertest.Start(t, func(c *server.Config) {
		c.MQTTAddr = ""
		c.MQTTBroker = "mqtts://127.0.0.1:" + devPort
		c.MQTTBootstrap = "mqtts://127.0.0.1:" + bootPort
		c.MQTTClientID = "provisiond-test"
	})
	startMosquitto(t, env, devPort, bootPort)
	waitFor(t, env.Server.MQTTConnected, "provisiond connected to mosquitto, its subscriptions granted")
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(2, "hq")
	// Eavesdroppers, subscribed before anything happens. Mosquitto 2.0 grants
	// SUBACK for filters its ACL file denies and enforces "read" on every
	// delivery instead, so what must hold is that they receive nothing.
	var mu sync.Mutex
	var leaked []string
	spy := func(_ paho.Client, m paho.Message) {
		mu.Lock()
		leaked = append(leaked, m.Topic())
		mu.Unlock()
	}
	eve, err := mqttDialURL(t, "127.0.0.1:"+bootPort, simulator.Nonce(), env, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"#", "bootstrap/+/result", "bootstrap/+/enroll/+", "devices/+/config"} {
		eve.Subscribe(f, 1, spy).WaitTimeout(5 * time.Second)
	}
	var devs []*simulator.Device
	for _, b := range bundles {
		d, _ := simulator.NewDevice(b)
		if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{Format: wire.CBOR}); err != nil { // bundle: the bootstrap listener
			t.Fatalf("enroll through mosquitto: %v", err)
		}
		devs = append(devs, d)
	}
	opsURL := simulator.MQTTOptions{Broker: "mqtts://127.0.0.1:" + devPort}
	s, err := devs[0].ConnectMQTT(ctxT(t), opsURL)
	if err != nil {
		t.Fatalf("operational connect through mosquitto: %v", err)
	}
	defer s.Close()
	cfg, err := s.Config(ctxT(t))
	if err != nil || cfg.DeviceID != devs[0].Enrollment.DeviceID {
		t.Fatalf("retained config: %+v %v", cfg, err)
	}
	if err := s.ReportState(ctxT(t), wire.StateReport{ConfigVersion: cfg.ConfigVersion, Health: "ok"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		d, _ := env.Server.Store().DeviceBySerial(context.Background(), devs[0].Bundle.Serial)
		return d.State == devices.StateActive
	}, "device active")
	if _, err := s.RenewLease(ctxT(t)); err != nil {
		t.Errorf("renew through mosquitto: %v", err)
	}

	// Device 0 tries to read device 1's retained config (with its Wi-Fi passphrase).
	s.Client().Subscribe(topics.Config(devs[1].Enrollment.DeviceID), 1, spy).WaitTimeout(5 * time.Second)
	// Barrier: then its own retained config, which the ACL permits. The
	// broker answers subscriptions of one connection in order, so once this
	// arrives, anything the first one would have delivered has arrived.
	barrier := make(chan struct{}, 1)
	s.Client().Subscribe(topics.Config(devs[0].Enrollment.DeviceID), 1, func(paho.Client, paho.Message) {
		select {
		case barrier <- struct{}{}:
		default:
		}
	}).WaitTimeout(5 * time.Second)
	select {
	case <-barrier:
	case <-time.After(10 * time.Second):
		t.Fatal("the permitted barrier subscription delivered nothing")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("mosquitto delivered messages the documented ACL forbids: %v", leaked)
	}
}
