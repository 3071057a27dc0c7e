package server_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/firmware"
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
	admin, _ := os.ReadFile(filepath.Join(env.DataDir, "admin.token"))
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
	op := map[string]string{"token": strings.TrimSpace(string(admin))}
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
