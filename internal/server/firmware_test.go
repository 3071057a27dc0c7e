package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// The firmware catalogue through the API: an operator adds an image (the
// server signs its manifest), targets a rollout and pins a device; a
// device downloads its model's image over mutual TLS, resuming with a
// Range request; anyone else is refused.
func TestFirmwareAPI(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	th1, th2 := env.Mint(2, "hq"), mintModel(t, env, "TH2", 1)
	outs, sum := simulator.Run(ctxT(t), append(th1, th2...), simulator.RunOptions{})
	if sum.Enrolled != 3 {
		t.Fatal(sum)
	}
	base := "https://" + env.Server.HTTPAddr().String()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	client := func(cert *tls.Certificate) *http.Client {
		tc := &tls.Config{RootCAs: roots}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	do := func(hc *http.Client, method, path, ct string, body []byte, hdr map[string]string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if hdr["token"] != "" {
			req.Header.Set("Authorization", "Bearer "+hdr["token"])
		}
		if hdr["range"] != "" {
			req.Header.Set("Range", hdr["range"])
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}
	op := map[string]string{"token": env.AdminToken()}
	img := make([]byte, 200_000)
	rand.Read(img)

	code, raw := do(client(nil), "POST", "/api/v1/firmware?model=TEST&version=1.1.0&notes=first", "application/octet-stream", img, op)
	var added httpapi.FirmwareAdded
	if json.Unmarshal(raw, &added); code != 201 || added.Manifest.Size != int64(len(img)) {
		t.Fatalf("add: %d %s", code, raw)
	}
	for _, c := range []struct {
		name, query string
		body        []byte
		want        int
	}{
		{"other bytes under the same version", "model=TEST&version=1.1.0", img[:10], 409},
		{"model with path traversal", "model=../../etc&version=1", img, 400},
		{"version not dotted numbers", "model=TEST&version=1.1-rc1", img, 400},
		{"empty image", "model=TEST&version=2", nil, 400},
	} {
		if code, raw := do(client(nil), "POST", "/api/v1/firmware?"+c.query, "application/octet-stream", c.body, op); code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, code, raw, c.want)
		}
	}
	if code, _ := do(client(nil), "POST", "/api/v1/firmware?model=TEST&version=3", "application/octet-stream", img, nil); code != 401 {
		t.Errorf("upload without a token: %d", code)
	}

	// The manifest verifies with the key the API publishes.
	var view httpapi.FirmwareView
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(view.PublicKey))
	pubAny, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := firmware.Verify(pubAny.(ed25519.PublicKey), added.Signed); err != nil || m != added.Manifest {
		t.Fatalf("manifest from the API: %+v %v", m, err)
	}

	// A rollout and its progress; a pin.
	var ro httpapi.RolloutView
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/firmware/rollouts", httpapi.RolloutRequest{Model: "TEST", Site: "hq", Version: "1.1.0", Percent: 50}, &ro.Rollout); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/firmware/rollouts", httpapi.RolloutRequest{Model: "TEST", Site: "hq", Version: "9.9", Percent: 50}, nil); err == nil {
		t.Error("a rollout of a version not in the catalogue was accepted")
	}
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view); err != nil || len(view.Rollouts) != 1 || view.Rollouts[0].Devices != 2 || view.Rollouts[0].Reported["sim-1.0.0"] != 2 {
		t.Errorf("rollout progress: %+v %v", view.Rollouts, err)
	}
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/devices/"+th1[0].Serial+"/firmware", httpapi.PinRequest{Version: "1.1.0"}, nil); err != nil {
		t.Errorf("pin: %v", err)
	}
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/firmware/rollouts/state", httpapi.RolloutStateRequest{Model: "TEST", Site: "hq", State: "paused"}, nil); err != nil {
		t.Errorf("pause: %v", err)
	}

	// Downloads: the device's certificate, its model's image, resumable.
	cert0, _ := outs[0].Device.TLSCertificate()
	path := "/fw/" + added.Manifest.SHA256
	if code, got := do(client(cert0), "GET", path, "", nil, nil); code != 200 || !bytes.Equal(got, img) {
		t.Errorf("download: %d, %d bytes", code, len(got))
	}
	if code, got := do(client(cert0), "GET", path, "", nil, map[string]string{"range": "bytes=150000-"}); code != 206 || !bytes.Equal(got, img[150000:]) {
		t.Errorf("resumed download: %d, %d bytes", code, len(got))
	}
	// The same over CoAP/DTLS, block-wise, and resumed from block 150.
	coapURI := "coaps://" + env.CoAPS() + "/fw/" + added.Manifest.SHA256
	if got, err := outs[0].Device.DownloadCoAP(ctxT(t), coapURI, 0); err != nil || !bytes.Equal(got, img) {
		t.Errorf("CoAP download: %d bytes, %v", len(got), err)
	}
	if got, err := outs[0].Device.DownloadCoAP(ctxT(t), coapURI, 150); err != nil || !bytes.Equal(got, img[150*1024:]) {
		t.Errorf("CoAP download from block 150: %d bytes, %v", len(got), err)
	}
	if _, err := outs[2].Device.DownloadCoAP(ctxT(t), coapURI, 0); err == nil || !strings.Contains(err.Error(), "NotFound") {
		t.Errorf("CoAP download by a device of another model: %v", err)
	}
	other, _ := outs[2].Device.TLSCertificate() // a TH2
	cert1, _ := outs[1].Device.TLSCertificate()
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{outs[1].Serial}, Reason: "test"}, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		hc   *http.Client
		path string
		want int
	}{
		{"no certificate", client(nil), path, 401},
		{"an admin token, no certificate", client(nil), path, 401},
		{"a device of another model", client(other), path, 404},
		{"a revoked device", client(cert1), path, 403},
		{"a digest that is not an image", client(cert0), "/fw/" + strings.Repeat("0", 64), 404},
		{"a path for a digest", client(cert0), "/fw/..%2f..%2fca%2fintermediate.key", 404},
	} {
		hdr := map[string]string{}
		if c.name == "an admin token, no certificate" {
			hdr = op
		}
		if code, raw := do(c.hc, "GET", c.path, "", nil, hdr); code != c.want {
			t.Errorf("%s: %d %.80s, want %d", c.name, code, raw, c.want)
		}
	}
}

// mintModel mints n devices of a model for site hq.
func mintModel(t *testing.T, env *servertest.Env, model string, n int) []wire.Bundle {
	t.Helper()
	m, err := env.Client.Mint(ctxT(t), model, n, "hq")
	if err != nil {
		t.Fatal(fmt.Errorf("mint %s: %w", model, err))
	}
	return m.Bundles
}

// A staged rollout end to end: an image targeted to half of a site reaches
// exactly the devices in the rollout's share, as a config push over MQTT;
// they download it with their certificates (some in Range chunks), verify
// and install it, and report the new version, which the rollout's progress
// counts. A corrupted image is refused by the device.
func TestFirmwareRollout(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	outs, sum := simulator.Run(ctxT(t), env.Mint(12, "hq"), simulator.RunOptions{})
	if sum.Enrolled != 12 {
		t.Fatal(sum)
	}
	type online struct {
		o    simulator.Outcome
		s    *simulator.Session
		last uint64
	}
	var fleet []*online
	for _, o := range outs {
		if !strings.Contains(o.Device.Enrollment.FirmwareKey, "BEGIN PUBLIC KEY") {
			t.Fatalf("%s: no firmware key in the enrollment answer", o.Serial)
		}
		s, err := o.Device.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		cfg, err := s.Config(ctxT(t))
		if err != nil || cfg.Firmware != nil {
			t.Fatalf("config before any rollout: %+v %v", cfg.Firmware, err)
		}
		fleet = append(fleet, &online{o: o, s: s, last: cfg.ConfigVersion})
	}
	img := make([]byte, 300_000)
	rand.Read(img)
	env.AddFirmware("TEST", "2.0.0", img)
	var ro devices.Rollout
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/firmware/rollouts", httpapi.RolloutRequest{Model: "TEST", Site: "hq", Version: "2.0.0", Percent: 50}, &ro); err != nil {
		t.Fatal(err)
	}
	// Every device gets a new config; those in the share carry the target.
	want, got := 0, 0
	for i, dev := range fleet {
		id := uuid.MustParse(dev.o.Device.Enrollment.DeviceID)
		in := firmware.InShare(ro.ID, id, 50)
		var cfg wire.DeviceConfig
		for cfg.ConfigVersion <= dev.last {
			var err error
			if cfg, err = dev.s.Config(ctxT(t)); err != nil {
				t.Fatalf("%s: no config pushed after the rollout: %v", dev.o.Serial, err)
			}
		}
		dev.last = cfg.ConfigVersion
		if in {
			want++
		}
		if (cfg.Firmware != nil) != in {
			t.Fatalf("%s: in the share %v, target %+v", dev.o.Serial, in, cfg.Firmware)
		}
		fw := dev.o.Device.FirmwareVersion()
		if cfg.Firmware != nil {
			// Over HTTPS whole, over HTTPS in 64 KiB Range chunks, or over CoAP block-wise.
			m, err := dev.o.Device.UpdateFirmware(ctxT(t), cfg.Firmware, simulator.FirmwareOptions{Chunk: int64(64 << 10 * (i % 2)), CoAP: i%3 == 2})
			if err != nil {
				t.Fatalf("%s: update: %v", dev.o.Serial, err)
			}
			fw = m.Version
			got++
		}
		if err := dev.s.ReportState(ctxT(t), wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: fw, Health: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	if want == 0 || want == len(fleet) || got != want {
		t.Fatalf("%d devices in the 50%% share, %d updated", want, got)
	}
	waitFor(t, func() bool {
		var view httpapi.FirmwareView
		env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view)
		return len(view.Rollouts) == 1 && view.Rollouts[0].OnVersion == want && view.Rollouts[0].Devices == 12
	}, fmt.Sprintf("the rollout's progress to show %d of 12 on 2.0.0", want))

	// A corrupted image on the server: the device refuses it and says so.
	bad := env.AddFirmware("TEST", "2.1.0", img[:100_000])
	victim := fleet[0]
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/devices/"+victim.o.Serial+"/firmware", httpapi.PinRequest{Version: "2.1.0"}, nil); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(env.DataDir, "firmware", "images", bad.Manifest.SHA256)
	raw, _ := os.ReadFile(path)
	raw[500] ^= 0xff
	os.WriteFile(path, raw, 0o600)
	var cfg wire.DeviceConfig
	for cfg.Firmware == nil || cfg.Firmware.Version != "2.1.0" {
		var err error
		if cfg, err = victim.s.Config(ctxT(t)); err != nil {
			t.Fatalf("no config with the pinned target: %v", err)
		}
	}
	if _, err := victim.o.Device.UpdateFirmware(ctxT(t), cfg.Firmware, simulator.FirmwareOptions{}); !errors.Is(err, firmware.ErrImageMismatch) {
		t.Fatalf("a corrupted image: %v, want refused", err)
	}
	if err := victim.s.ReportState(ctxT(t), wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: victim.o.Device.FirmwareVersion(), Health: "firmware_refused"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var view httpapi.FirmwareView
		env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view)
		return len(view.Rollouts) == 1 && view.Rollouts[0].Unhealthy == 1
	}, "the refusal in the rollout's progress")
}

// Devices online in a soak (devsim --soak) install a new firmware target
// when their config carries it, over CoAP, and report the version.
func TestSoakFleetUpdatesFirmware(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	outs, sum := simulator.Run(ctxT(t), env.Mint(6, "hq"), simulator.RunOptions{})
	if sum.Enrolled != 6 {
		t.Fatal(sum)
	}
	var devs []*simulator.Device
	for _, o := range outs {
		devs = append(devs, o.Device)
	}
	fleet, err := simulator.GoOnline(ctxT(t), devs, simulator.SoakOptions{Broker: env.MQTTS(), FirmwareOverCoAP: true})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	img := make([]byte, 50_000)
	rand.Read(img)
	env.AddFirmware("TEST", "3.0", img)
	if err := env.Client.Do(ctxT(t), "PUT", "/api/v1/firmware/rollouts", httpapi.RolloutRequest{Model: "TEST", Version: "3.0", Percent: 100}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		var view httpapi.FirmwareView
		env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view)
		return fleet.Stats().FirmwareUpdates == 6 && len(view.Rollouts) == 1 && view.Rollouts[0].OnVersion == 6
	}, "six devices on 3.0")
	if st := fleet.Stats(); st.FirmwareRefused != 0 || st.Online != 6 {
		t.Errorf("soak stats: %+v", st)
	}
}

// TestLegacyTargetsMoved: a data directory from before rollouts lived in
// the inventory (firmware/targets.json) starts with its rollouts in the
// inventory, and the file is set aside.
func TestLegacyTargetsMoved(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, server.FirmwareDir), 0o700); err != nil {
		t.Fatal(err)
	}
	legacy := `{"rollouts": [{"id": "0a1b2c3d4e5f6071", "model": "TH1", "version": "1.1", "previous": "1.0", "percent": 25, "state": "paused", "updated": "2026-11-01T10:00:00Z"}],
	  "pins": {"` + uuid.NewString() + `": "1.0"}}`
	path := filepath.Join(dir, server.FirmwareDir, "targets.json")
	if err := os.WriteFile(path, []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	env := servertest.Start(t, func(c *server.Config) { c.DataDir = dir })
	var fw httpapi.FirmwareView
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &fw); err != nil {
		t.Fatal(err)
	}
	if len(fw.Rollouts) != 1 || fw.Rollouts[0].ID != "0a1b2c3d4e5f6071" || fw.Rollouts[0].State != devices.RolloutPaused || fw.Rollouts[0].Percent != 25 {
		t.Fatalf("rollouts after the move: %+v", fw.Rollouts)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("targets.json still in place: %v", err)
	}
	if _, err := os.Stat(path + ".imported"); err != nil {
		t.Errorf("targets.json.imported: %v", err)
	}
}
