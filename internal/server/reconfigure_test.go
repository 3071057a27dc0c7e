package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestSiteReconfiguration(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	var devs [3]*simulator.Device
	for i, b := range bundles {
		devs[i], _ = simulator.NewDevice(b)
	}
	coapDev, mqttDev, offline := devs[0], devs[1], devs[2]
	if _, err := coapDev.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*simulator.Device{mqttDev, offline} {
		if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	obs, err := coapDev.ObserveConfig(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Stop()
	next := func(ch <-chan wire.DeviceConfig, what string) wire.DeviceConfig {
		t.Helper()
		select {
		case c := <-ch:
			return c
		case <-time.After(5 * time.Second):
			t.Fatalf("no config within 5s: %s", what)
		}
		return wire.DeviceConfig{}
	}
	if c := next(obs.Configs, "CoAP observe, first answer"); c.ConfigVersion != 1 || c.WiFi.SSID != "ssid-hq" {
		t.Fatalf("first config %+v", c)
	}
	session, err := mqttDev.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if c, _ := session.Config(ctxT(t)); c.ConfigVersion != 1 {
		t.Fatalf("MQTT first config %+v", c)
	}

	ssid, pass := "Office-2026", "a new passphrase"
	start := time.Now()
	var site httpapi.SiteView
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{SSID: &ssid, Passphrase: &pass}, &site); err != nil {
		t.Fatal(err)
	}
	c1 := next(obs.Configs, "CoAP observe notification")
	c2, err := session.Config(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("site change reached both online devices in %v", time.Since(start))
	for name, c := range map[string]wire.DeviceConfig{"coap": c1, "mqtt": c2} {
		if c.ConfigVersion != 2 || c.WiFi.SSID != ssid || c.WiFi.Passphrase != pass {
			t.Errorf("%s device got %+v, want version 2 with the new Wi-Fi", name, c)
		}
	}
	if site.Enrolled != 3 || site.ConfigApplied != 0 {
		t.Errorf("convergence right after the change: %d/%d", site.ConfigApplied, site.Enrolled)
	}
	if err := coapDev.ReportStateCoAP(ctxT(t), simulator.EnrollOptions{}, wire.StateReport{ConfigVersion: 2, Health: "ok"}); err != nil {
		t.Fatalf("CoAP state report: %v", err)
	}
	if err := session.ReportState(ctxT(t), wire.StateReport{ConfigVersion: 2, Health: "ok"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var v httpapi.SiteView
		env.Client.Do(ctxT(t), "GET", "/api/v1/sites/hq", nil, &v)
		return v.ConfigApplied == 2 && v.Enrolled == 3
	}, "2 of 3 devices converged")

	// The offline device gets the new config when it connects.
	late, err := offline.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if c, err := late.Config(ctxT(t)); err != nil || c.ConfigVersion != 2 || c.WiFi.SSID != ssid {
		t.Errorf("offline device on connect: %+v %v", c, err)
	}
	// A device cannot claim a version it was never given.
	if err := coapDev.ReportStateCoAP(ctxT(t), simulator.EnrollOptions{}, wire.StateReport{ConfigVersion: 9}); simulator.Reason(err) != "bad_request" {
		t.Errorf("report of a future version: %v", err)
	}
}

func TestBulkOverride(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/23")
	bundles := env.Mint(200, "hq")
	outs, sum := simulator.Run(ctxT(t), bundles, simulator.RunOptions{Transport: "mix", Concurrency: 32})
	if sum.Enrolled != 200 {
		t.Fatal(sum)
	}
	var online *simulator.Device
	for _, o := range outs {
		if o.Device.Enrollment != nil && strings.HasPrefix(o.Device.Bundle.Serial, "TEST") {
			online = o.Device
			break
		}
	}
	s, err := online.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if c, _ := s.Config(ctxT(t)); c.ConfigVersion != 1 {
		t.Fatalf("first config %+v", c)
	}
	start := time.Now()
	var res httpapi.OverrideResponse
	err = env.Client.Do(ctxT(t), "PATCH", "/api/v1/devices/config", httpapi.OverrideRequest{Site: "hq",
		Override: &httpapi.OverrideFields{SSID: "Lab-VLAN", NTP: []string{"ntp.lab.example"}}}, &res)
	if err != nil || res.Changed != 200 || res.Pushed != 200 {
		t.Fatalf("bulk override: %+v %v", res, err)
	}
	t.Logf("override of 200 devices committed and pushed in %v", time.Since(start))
	c, err := s.Config(ctxT(t))
	if err != nil || c.ConfigVersion != 2 || c.WiFi.SSID != "Lab-VLAN" || strings.Join(c.Network.NTP, ",") != "ntp.lab.example" ||
		c.WiFi.Passphrase != "passphrase-hq" {
		t.Fatalf("pushed config %+v %v", c, err)
	}
	var dv httpapi.DeviceView
	env.Client.Do(ctxT(t), "GET", "/api/v1/devices/"+online.Bundle.Serial, nil, &dv)
	if dv.Override == nil || dv.Override.SSID != "Lab-VLAN" || dv.ConfigVersion != 2 {
		t.Errorf("device view %+v", dv)
	}
	// Clearing the override: back to the site profile, as version 3.
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/devices/config", httpapi.OverrideRequest{Devices: []string{online.Bundle.Serial}, Clear: true}, &res); err != nil || res.Changed != 1 {
		t.Fatalf("clear: %+v %v", res, err)
	}
	if c, err := s.Config(ctxT(t)); err != nil || c.ConfigVersion != 3 || c.WiFi.SSID != "ssid-hq" {
		t.Errorf("after clearing: %+v %v", c, err)
	}
	for name, req := range map[string]httpapi.OverrideRequest{
		"nothing selected":   {Override: &httpapi.OverrideFields{SSID: "x"}},
		"both set and clear": {Site: "hq", Override: &httpapi.OverrideFields{SSID: "x"}, Clear: true},
		"short passphrase":   {Site: "hq", Override: &httpapi.OverrideFields{Passphrase: "short"}},
		"bad dns":            {Site: "hq", Override: &httpapi.OverrideFields{DNS: []string{"not-an-ip"}}},
	} {
		before, _ := env.Server.Store().Digest(context.Background())
		if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/devices/config", req, nil); err == nil || !strings.Contains(err.Error(), "400") {
			t.Errorf("%s: %v, want 400", name, err)
		}
		if after, _ := env.Server.Store().Digest(context.Background()); after != before {
			t.Errorf("%s changed the store", name)
		}
	}
}
