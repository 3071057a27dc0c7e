package server_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki/seal"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// A full run, logged at debug level, must not contain any secret: Wi-Fi
// passphrases (site and override), claim tokens (used, reused, wrong), API
// tokens and the CA passphrase.
func TestSecretsNeverLogged(t *testing.T) {
	env := servertest.Start(t)
	sitePass := "SitePass-4f9c2e71"
	name, ssid, sec, cidr := "hq", "hq-wifi", "wpa2-psk", "10.40.0.0/24"
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/sites", httpapi.SiteRequest{Name: &name, SSID: &ssid, Security: &sec, Passphrase: &sitePass, CIDR: &cidr}, nil); err != nil {
		t.Fatal(err)
	}
	bundles := env.Mint(4, "hq")
	outs, sum := simulator.Run(ctxT(t), bundles[:2], simulator.RunOptions{Transport: "mix"})
	if sum.Enrolled != 2 {
		t.Fatalf("%v", sum)
	}
	// The same token again with another key, and a wrong token.
	reuse, _ := simulator.NewDevice(bundles[0])
	_, _ = reuse.Enroll(ctxT(t), simulator.EnrollOptions{})
	wrong := bundles[2]
	wrong.ClaimToken = "WRONG0TOKEN0ABCDEFGH1234"
	bad, _ := simulator.NewDevice(wrong)
	_, _ = bad.EnrollMQTT(ctxT(t), simulator.MQTTOptions{})

	overridePass := "OverridePass-93b1d0"
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/devices/config", httpapi.OverrideRequest{Site: "hq",
		Override: &httpapi.OverrideFields{Passphrase: overridePass}}, nil); err != nil {
		t.Fatal(err)
	}
	var created httpapi.TokenCreated
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "ops", Role: devices.RoleOperator}, &created); err != nil {
		t.Fatal(err)
	}
	op, err := httpapi.NewClient(env.Client.BaseURL(), created.Secret, env.Server.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Do(ctxT(t), "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{outs[0].Device.Enrollment.DeviceID}, Reason: "test"}, nil); err != nil {
		t.Fatal(err)
	}
	badClient, _ := httpapi.NewClient(env.Client.BaseURL(), "not-a-real-token-7f3e", env.Server.CA().RootPEM())
	_ = badClient.Do(ctxT(t), "GET", "/api/v1/devices", nil, nil)
	admin, err := os.ReadFile(filepath.Join(env.DataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}

	logs := env.Logs()
	if !strings.Contains(logs, "enrolled") && !strings.Contains(logs, "enroll") {
		t.Fatalf("the logs do not even mention enrollment; is the capture working?\n%s", logs)
	}
	secrets := map[string]string{
		"site passphrase": sitePass, "override passphrase": overridePass, "wrong claim token": wrong.ClaimToken,
		"operator token": created.Secret, "bad API token": "not-a-real-token-7f3e",
		"admin token": strings.TrimSpace(string(admin)), "CA passphrase": env.Config.CAPassphrase,
	}
	for i, b := range bundles {
		secrets["claim token "+string(rune('0'+i))] = b.ClaimToken
	}
	for what, secret := range secrets {
		if secret == "" {
			t.Fatalf("%s is empty", what)
		}
		if strings.Contains(logs, secret) {
			t.Errorf("the logs contain the %s", what)
		}
	}
}

// Wi-Fi passphrases (site and per-device override) are sealed in the
// inventory file, and devices still get them in clear in their config.
func TestPassphrasesSealedAtRest(t *testing.T) {
	env := servertest.Start(t)
	p1, p2, p3 := "FirstSitePass-81d2", "SecondSitePass-c4a9", "OverridePass-7e55"
	name, ssid, sec, cidr := "hq", "hq-wifi", "wpa2-psk", "10.41.0.0/24"
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/sites", httpapi.SiteRequest{Name: &name, SSID: &ssid, Security: &sec, Passphrase: &p1, CIDR: &cidr}, nil); err != nil {
		t.Fatal(err)
	}
	bundles := env.Mint(3, "hq")
	d1, _ := simulator.NewDevice(bundles[0])
	if r, err := d1.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil || r.WiFi.Passphrase != p1 {
		t.Fatalf("first device: %v, passphrase %q", err, r.WiFi.Passphrase)
	}
	// A change of SSID alone keeps the sealed passphrase as it is.
	ssid2 := "hq-wifi-2"
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{SSID: &ssid2}, nil); err != nil {
		t.Fatal(err)
	}
	d2, _ := simulator.NewDevice(bundles[1])
	if r, err := d2.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil || r.WiFi.Passphrase != p1 || r.WiFi.SSID != ssid2 {
		t.Fatalf("after an SSID change: %v, %+v", err, r.WiFi)
	}
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{Passphrase: &p2}, nil); err != nil {
		t.Fatal(err)
	}
	short := "short"
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{Passphrase: &short}, nil); err == nil {
		t.Error("a 5-character passphrase was accepted")
	}
	d3, _ := simulator.NewDevice(bundles[2])
	if r, err := d3.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil || r.WiFi.Passphrase != p2 {
		t.Fatalf("after a passphrase change: %v, %+v", err, r.WiFi)
	}
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/devices/config", httpapi.OverrideRequest{Devices: []string{d1.Enrollment.DeviceID},
		Override: &httpapi.OverrideFields{Passphrase: p3}}, nil); err != nil {
		t.Fatal(err)
	}
	s, err := d1.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := s.Config(ctxT(t))
	s.Close()
	if err != nil || cfg.WiFi.Passphrase != p3 {
		t.Fatalf("override: %v, %+v", err, cfg.WiFi)
	}
	var view httpapi.SiteView
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/sites/hq", nil, &view); err != nil || !view.PassphraseSet {
		t.Fatalf("site view: %v %+v", err, view)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.Server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	raw := storedBytes(t, env)
	for _, p := range []string{p1, p2, p3} {
		if bytes.Contains(raw, []byte(p)) {
			t.Errorf("the inventory file holds %q in clear", p)
		}
	}
	if !bytes.Contains(raw, []byte(seal.Prefix)) {
		t.Error("no sealed value in the inventory file")
	}
}

// storedBytes is everything the inventory holds at rest: the bbolt file, or
// every key and value of its etcd keyspace.
func storedBytes(t *testing.T, env *servertest.Env) []byte {
	t.Helper()
	if c := etcdtest.Shared(); c != nil {
		target, err := etcdkv.ParseURL(env.Config.Store)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Client(t).Get(context.Background(), target.Prefix, clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var all []byte
		for _, kv := range resp.Kvs {
			all = append(append(all, kv.Key...), kv.Value...)
		}
		return all
	}
	raw, err := os.ReadFile(filepath.Join(env.DataDir, server.InventoryFile))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
