package main

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// factory mint --idevid gives each bundle a factory certificate naming its
// serial, from a throwaway manufacturer CA registered for the batch; the CA
// can be listed, removed and registered again.
func TestFactoryCACommands(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	dir := filepath.Join(t.TempDir(), "batch")
	if out, err := provctl(t, data, "factory", "mint", "--model", "TH9", "--count", "3", "--idevid", "--out", dir); err != nil {
		t.Fatalf("mint --idevid: %v\n%s", err, out)
	}
	bundles, err := simulator.LoadBundles(dir)
	if err != nil || len(bundles) != 3 {
		t.Fatalf("bundles: %d %v", len(bundles), err)
	}
	ca, err := mfr.Load(filepath.Join(dir, "mfr-ca"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(dir, "mfr-ca", mfr.KeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("manufacturer CA key: %v %v", st, err)
	}
	for _, b := range bundles {
		blk, _ := pem.Decode([]byte(b.IDevID))
		if blk == nil || b.IDevIDKey == "" {
			t.Fatalf("bundle %s has no factory certificate", b.Serial)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || c.Subject.SerialNumber != b.Serial || c.CheckSignatureFrom(ca.Cert) != nil {
			t.Fatalf("bundle %s: factory certificate %v names %q", b.Serial, err, c.Subject.SerialNumber)
		}
	}

	out, err := provctl(t, data, "-o", "json", "factory", "ca", "list")
	var cas []httpapi.FactoryCAView
	if err != nil || json.Unmarshal([]byte(out), &cas) != nil || len(cas) != 1 || cas[0].Model != "TH9" || cas[0].Batch == "" {
		t.Fatalf("factory ca list: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "factory", "ca", "remove", cas[0].ID[:10]); err != nil || !strings.Contains(out, "removed") {
		t.Fatalf("factory ca remove: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "factory", "ca", "remove", cas[0].ID[:10]); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("removing it twice: %v\n%s", err, out)
	}
	caFile := filepath.Join(dir, "mfr-ca", mfr.CertFile)
	if out, err := provctl(t, data, "factory", "ca", "add", caFile, "--model", "TH9", "--auto-register", "--allow-expired", "--serial-fields", "CN"); err != nil {
		t.Fatalf("factory ca add: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "factory", "ca", "add", caFile, "--model", "TH9"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("adding it twice: %v\n%s", err, out)
	}
	leaf := filepath.Join(t.TempDir(), "leaf.pem")
	os.WriteFile(leaf, []byte(bundles[0].IDevID), 0o600)
	if out, err := provctl(t, data, "factory", "ca", "add", leaf, "--model", "TH9"); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("a device certificate as a CA: %v\n%s", err, out)
	}
	out, err = provctl(t, data, "factory", "ca", "list")
	if err != nil || !strings.Contains(out, "TH9") || !strings.Contains(out, "true") {
		t.Fatalf("factory ca list: %v\n%s", err, out)
	}
}

// A site's LwM2M bootstrap profile is set with site create, shown, changed
// and removed with site update; bad profiles are refused.
func TestSiteLwM2MProfile(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	if out, err := provctl(t, data, "site", "create", "plant", "--ssid", "Plant", "--security", "wpa2-psk", "--passphrase", "plant-pass-123",
		"--cidr", "10.30.0.0/24", "--lwm2m-server", "coaps://lwm2m.example.net:5684", "--lwm2m-wifi", "true"); err != nil {
		t.Fatalf("site create: %v\n%s", err, out)
	}
	out, err := provctl(t, data, "-o", "json", "site", "show", "plant")
	var v httpapi.SiteView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.LwM2M == nil {
		t.Fatalf("site show: %v\n%s", err, out)
	}
	if p := v.LwM2M; p.ServerURI != "coaps://lwm2m.example.net:5684" || p.ShortServerID != 1 || p.Lifetime != 86400 || p.Binding != "U" ||
		p.SecurityMode != "certificate" || !p.WiFi {
		t.Errorf("profile with defaults: %+v", p)
	}
	if out, err := provctl(t, data, "site", "update", "plant", "--lwm2m-server", "coaps://mgmt.example.net", "--lwm2m-security", "psk",
		"--lwm2m-server-id", "101", "--lwm2m-lifetime", "300", "--lwm2m-binding", "UQ"); err != nil || !strings.Contains(out, "short server ID 101") {
		t.Fatalf("site update: %v\n%s", err, out)
	}
	for name, args := range map[string][]string{
		"coap, not coaps":          {"--lwm2m-server", "coap://x"},
		"unknown security mode":    {"--lwm2m-server", "coaps://x", "--lwm2m-security", "nosec"},
		"short server ID 65535":    {"--lwm2m-server", "coaps://x", "--lwm2m-server-id", "65535"},
		"binding twice":            {"--lwm2m-server", "coaps://x", "--lwm2m-binding", "UU"},
		"a field without a server": {"--lwm2m-lifetime", "60"},
	} {
		if out, err := provctl(t, data, append([]string{"site", "update", "plant"}, args...)...); err == nil {
			t.Errorf("%s: accepted\n%s", name, out)
		}
	}
	if out, err := provctl(t, data, "site", "update", "plant", "--lwm2m-server", ""); err != nil {
		t.Fatalf("remove the profile: %v\n%s", err, out)
	}
	out, _ = provctl(t, data, "-o", "json", "site", "show", "plant")
	if strings.Contains(out, "lwm2m") {
		t.Errorf("profile still there:\n%s", out)
	}
}

// A batch minted with --lwm2m-psk bootstraps over LwM2M with the PSK its
// bundle holds (the inventory keeps it sealed); the management-server PSK
// the bootstrap gave is what `devices lwm2m-credentials` shows and exports;
// `devices rebootstrap` lets a provisioned device bootstrap again.
func TestMintLwM2MPSK(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	if out, err := provctl(t, data, "site", "create", "field", "--ssid", "Field", "--security", "wpa2-psk", "--passphrase", "field-pass-123",
		"--cidr", "10.31.0.0/24", "--lwm2m-server", "coaps://lwm2m.example.net:5684", "--lwm2m-security", "psk"); err != nil {
		t.Fatalf("site create: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "batch")
	if out, err := provctl(t, data, "factory", "mint", "--model", "MTR", "--count", "2", "--site", "field", "--lwm2m-psk", "--out", dir); err != nil {
		t.Fatalf("mint: %v\n%s", err, out)
	}
	bundles, err := simulator.LoadBundles(dir)
	if err != nil || len(bundles) != 2 {
		t.Fatalf("bundles: %d, %v", len(bundles), err)
	}
	b := bundles[0]
	if len(b.LwM2MPSK) != 64 || b.LwM2MPSK == bundles[1].LwM2MPSK {
		t.Fatalf("bundle LwM2M PSK %q", b.LwM2MPSK)
	}
	stored, err := env.Server.Store().DeviceBySerial(t.Context(), b.Serial)
	if err != nil || stored.BootstrapPSK == "" || strings.Contains(stored.BootstrapPSK, b.LwM2MPSK) {
		t.Fatalf("the bootstrap PSK at rest: %q (%v)", stored.BootstrapPSK, err)
	}
	dev, err := simulator.NewDevice(b)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := provctl(t, data, "devices", "rebootstrap", b.Serial); err == nil {
		t.Fatalf("rebootstrap of a device never bootstrapped: accepted\n%s", out)
	}
	res, err := dev.BootstrapLwM2M(t.Context(), simulator.LwM2MOptions{Endpoint: "coaps://" + env.CoAPS(), PSK: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := provctl(t, data, "devices", "lwm2m-credentials", b.Serial)
	if err != nil || !strings.Contains(out, "psk "+hex.EncodeToString(res.PSK)) || !strings.Contains(out, "psk identity "+b.Serial) {
		t.Fatalf("lwm2m-credentials: %v\n%s", err, out)
	}
	out, err = provctl(t, data, "devices", "lwm2m-credentials", "--site", "field")
	if want := "endpoint,psk_identity,psk\n" + b.Serial + "," + b.Serial + "," + hex.EncodeToString(res.PSK) + "\n"; err != nil || out != want {
		t.Fatalf("export (only the bootstrapped device): %v\n%s\nwant\n%s", err, out, want)
	}
	if out, err := provctl(t, data, "devices", "rebootstrap", b.Serial); err != nil || !strings.Contains(out, "fresh credentials") {
		t.Fatalf("rebootstrap: %v\n%s", err, out)
	}
}

// provctl cert server writes a server's certificate files; with --radius
// also what FreeRADIUS's EAP-TLS trusts device certificates by: the
// intermediate and root (client-ca.pem) and an empty ca_path.
func TestCertServerRadius(t *testing.T) {
	env := servertest.Start(t)
	dir := filepath.Join(t.TempDir(), "radius")
	out, err := provctl(t, env.DataDir, "cert", "server", "--radius", "--name", "radius.example.net", "--out", dir)
	if err != nil || !strings.Contains(out, "client-ca.pem") {
		t.Fatalf("cert server --radius: %v\n%s", err, out)
	}
	read := func(name string) []*x509.Certificate {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var certs []*x509.Certificate
		for b, rest := pem.Decode(raw); b != nil; b, rest = pem.Decode(rest) {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			certs = append(certs, c)
		}
		return certs
	}
	ca := env.Server.CA()
	server, clients := read("server.pem"), read("client-ca.pem")
	if len(server) != 2 || server[0].DNSNames[0] != "radius.example.net" || !server[1].Equal(ca.Intermediate()) {
		t.Fatalf("server.pem: %d certificates", len(server))
	}
	if len(clients) != 2 || !clients[0].Equal(ca.Intermediate()) || !clients[1].Equal(ca.Root()) {
		t.Fatalf("client-ca.pem: %d certificates", len(clients))
	}
	if st, err := os.Stat(filepath.Join(dir, "server.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("server.key: %v %v", st, err)
	}
	if entries, err := os.ReadDir(filepath.Join(dir, "empty")); err != nil || len(entries) != 0 {
		t.Fatalf("empty/: %v %v", entries, err)
	}
}
