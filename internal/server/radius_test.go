package server_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// syncBuffer is a bytes.Buffer that a process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

const radiusSecret = "test-shared-secret-0123"

// startFreeRADIUS runs Debian's FreeRADIUS in the foreground on a copy of
// its configuration with docs/radius installed as docs/network.md says:
// the eap_provisiond module, the provisiond virtual server (listening on
// loopback at port, the access points being 127.0.0.1) and the files of a
// RADIUS server certificate from provisiond's CA. It returns when the
// server is ready.
func startFreeRADIUS(t testing.TB, env *servertest.Env, port int, debug bool, extra ...string) *syncBuffer {
	t.Helper()
	return startFreeRADIUSWith(t, env, port, debug, radiusToken(t, env), extra...)
}

// radiusToken creates an API token of role radius for sites (every site
// when none), as docs/network.md has the operator do.
func radiusToken(t testing.TB, env *servertest.Env, sites ...string) string {
	t.Helper()
	var tok httpapi.TokenCreated
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/tokens",
		httpapi.TokenRequest{Name: "freeradius", Role: devices.RoleRADIUS, Sites: sites}, &tok); err != nil {
		t.Fatal(err)
	}
	return tok.Secret
}

// startFreeRADIUSWith is startFreeRADIUS with the radius token its MAC
// authorisations use (rest_provisiond, to provisiond's HTTPS API).
func startFreeRADIUSWith(t testing.TB, env *servertest.Env, port int, debug bool, token string, extra ...string) *syncBuffer {
	t.Helper()
	bin := testtools.Need(t, "freeradius")
	if _, err := os.Stat("/usr/lib/freeradius/rlm_rest.so"); err != nil {
		t.Fatalf("FreeRADIUS's rest module is not installed (Debian's freeradius-rest; make test installs it): %v", err)
	}
	dir := filepath.Join(t.TempDir(), "raddb")
	if out, err := exec.Command("cp", "-a", "/etc/freeradius/3.0", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy the FreeRADIUS configuration: %v\n%s", err, out)
	}
	// Only our virtual server and module: Debian's default ones listen on
	// the standard ports and need certificates of their own.
	links, _ := filepath.Glob(filepath.Join(dir, "sites-enabled", "*"))
	for _, l := range append(links, filepath.Join(dir, "mods-enabled", "eap")) {
		os.Remove(l)
	}
	ocsp := env.Server.OCSPAddr().String()
	install := func(rel string, replace ...string) {
		raw, err := os.ReadFile(filepath.Join("..", "..", "docs", "radius", rel))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.NewReplacer(replace...).Replace(string(raw))
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(text), 0o640); err != nil {
			t.Fatal(err)
		}
		enabled := filepath.Join(dir, strings.Replace(filepath.Dir(rel), "-available", "-enabled", 1), filepath.Base(rel))
		if err := os.Symlink(filepath.Join("..", rel), enabled); err != nil {
			t.Fatal(err)
		}
	}
	install("mods-available/eap_provisiond", "provisiond.example.net:8080", ocsp)
	install("mods-available/rest_provisiond", "https://provisiond.example.net:8443", "https://"+env.Server.HTTPAddr().String())
	install("sites-available/provisiond", "port = 1812", fmt.Sprintf("port = %d", port), "ipaddr = *", "ipaddr = 127.0.0.1",
		"ipaddr = 10.0.0.0/8", "ipaddr = 127.0.0.1/32", "CHANGE-ME-shared-secret", radiusSecret, "CHANGE-ME-radius-token", token)
	var cert httpapi.ServerCertResponse
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/server-certificates",
		httpapi.ServerCertRequest{Names: []string{"radius.example.net"}, Lifetime: "24h"}, &cert); err != nil {
		t.Fatal(err)
	}
	if err := cert.WriteFiles(filepath.Join(dir, "provisiond"), true); err != nil { // as provctl cert server --radius
		t.Fatal(err)
	}
	for i, e := range extra { // more virtual servers
		os.WriteFile(filepath.Join(dir, "sites-enabled", fmt.Sprintf("extra%d", i)), []byte(e), 0o640)
	}
	// The test runs as root: FreeRADIUS need not drop to freerad, whose
	// group could not read the test's temporary directory.
	conf := filepath.Join(dir, "radiusd.conf")
	raw, _ := os.ReadFile(conf)
	raw = bytes.ReplaceAll(raw, []byte("\tuser = freerad"), []byte("\t# user = freerad"))
	raw = bytes.ReplaceAll(raw, []byte("\tgroup = freerad"), []byte("\t# group = freerad"))
	os.WriteFile(conf, raw, 0o640)

	out := &syncBuffer{}
	args := []string{"-f", "-l", "stdout", "-d", dir, "-n", "radiusd"}
	if debug {
		args = append(args, "-X") // every request logged, one thread
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("freeradius:\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "Ready to process requests"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) || cmd.ProcessState != nil {
			t.Fatalf("freeradius did not start:\n%s", out.String())
		}
	}
	return out
}

// nasStandIn is a FreeRADIUS virtual server that takes Disconnect-Requests
// on port as an access point does (RFC 5176), answering Disconnect-ACK.
func nasStandIn(port int) string {
	return fmt.Sprintf(`server nas-stand-in {
	listen {
		type = coa
		ipaddr = 127.0.0.1
		port = %d
	}
	client provisiond {
		ipaddr = 127.0.0.1/32
		secret = nas-secret-0123
	}
	recv-coa {
		ok
	}
	send-coa {
		ok
	}
}
`, port)
}

// eapTLS runs eapol_test's EAP-TLS against the RADIUS server with an
// identity, a certificate chain and key, checking the server's certificate
// against ca (and serverName when set), and reports whether it was accepted.
func eapTLS(t testing.TB, port int, identity, serverName string, ca *x509.Certificate, chain []*x509.Certificate, keyPEM []byte) (bool, string) {
	t.Helper()
	bin := testtools.Need(t, "eapol_test")
	dir := t.TempDir()
	var certs bytes.Buffer
	for _, c := range chain {
		pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	os.WriteFile(filepath.Join(dir, "device.pem"), certs.Bytes(), 0o600)
	os.WriteFile(filepath.Join(dir, "device.key"), keyPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "root.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644)
	match := ""
	if serverName != "" {
		match = fmt.Sprintf("\tdomain_match=\"%s\"\n", serverName)
	}
	conf := fmt.Sprintf(`network={
	key_mgmt=WPA-EAP
	eap=TLS
	identity="%s"
	ca_cert="%s/root.pem"
	client_cert="%s/device.pem"
	private_key="%s/device.key"
%s	eapol_flags=0
}
`, identity, dir, dir, dir, match)
	os.WriteFile(filepath.Join(dir, "eapol.conf"), []byte(conf), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "-c", filepath.Join(dir, "eapol.conf"), "-a", "127.0.0.1",
		"-p", fmt.Sprint(port), "-s", radiusSecret, "-t", "10", "-r", "0").CombinedOutput()
	return err == nil && strings.Contains(string(out), "SUCCESS"), string(out)
}

// A device certificate from provisiond opens the Wi-Fi of an enterprise
// site: the device's config says EAP-TLS (its identity, the RADIUS
// server's CA and name, no passphrase) and the simulator joins with what it
// says; eapol_test's EAP-TLS against Debian's FreeRADIUS configured with
// docs/radius is accepted; after provctl revoke it is refused at the next
// authentication (OCSP to provisiond); a certificate from another CA is
// refused.
func TestEAPTLSWithFreeRADIUS(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t, func(c *server.Config) { c.OCSPAddr = "127.0.0.1:0" })
	str := func(s string) *string { return &s }
	port, nasPort := freeUDPPort(t), freeUDPPort(t)
	nas := []devices.NAS{{Address: fmt.Sprintf("127.0.0.1:%d", nasPort), Secret: "nas-secret-0123"}}
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/sites", httpapi.SiteRequest{Name: str("wifi"),
		SSID: str("Plant"), Security: str("wpa2-enterprise"), CIDR: str("10.44.0.0/24"), RADIUSServerName: str("radius.example.net"),
		NAS: &nas}, nil); err != nil {
		t.Fatal(err)
	}
	radiusLog := startFreeRADIUS(t, env, port, true, nasStandIn(nasPort))
	b := env.Mint(1, "wifi")[0]
	dev, err := simulator.NewDevice(b)
	if err != nil {
		t.Fatal(err)
	}
	dev.MAC = "02:5e:10:00:02:0a"
	res, err := dev.Enroll(context.Background(), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	join, err := dev.WiFiJoin(res.WiFi)
	if err != nil {
		t.Fatalf("the device cannot join with its config %+v: %v", res.WiFi, err)
	}
	if join.Passphrase != "" || join.EAPIdentity != res.DeviceID || join.ServerName != "radius.example.net" {
		t.Fatalf("join settings: %+v", join)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(dev.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if ok, out := eapTLS(t, port, join.EAPIdentity, join.ServerName, join.CA, dev.Chain, keyPEM); !ok {
		t.Fatalf("a provisioned device's EAP-TLS was refused:\n%s", out)
	}
	// The device checks the server's name: a RADIUS server certificate of
	// another name is refused by the device.
	if ok, out := eapTLS(t, port, join.EAPIdentity, "other.example.net", join.CA, dev.Chain, keyPEM); ok {
		t.Fatalf("the device accepted a RADIUS server of another name:\n%s", out)
	}
	// Another CA's certificate: refused.
	other, err := mfr.New("Not provisiond")
	if err != nil {
		t.Fatal(err)
	}
	id, err := other.Issue(b.Serial, mfr.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, out := eapTLS(t, port, join.EAPIdentity, "", join.CA, []*x509.Certificate{id.Cert}, mfr.KeyPEM(id.Key)); ok {
		t.Fatalf("a certificate of another CA was accepted:\n%s", out)
	}
	// Revoked: refused at the next authentication.
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: []string{b.Serial}, Reason: "stolen"}, nil); err != nil {
		t.Fatal(err)
	}
	if ok, out := eapTLS(t, port, join.EAPIdentity, join.ServerName, join.CA, dev.Chain, keyPEM); ok {
		t.Fatalf("a revoked device's EAP-TLS was accepted:\n%s", out)
	}
	// The live session is ended at once: the site's access point (a
	// FreeRADIUS stand-in) got a Disconnect-Request naming the device.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(radiusLog.String(), "Sent Disconnect-ACK"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no Disconnect-Request reached the access point")
		}
	}
	logged := radiusLog.String()
	if !strings.Contains(logged, "Received Disconnect-Request") || !strings.Contains(logged, `User-Name = "`+join.EAPIdentity+`"`) ||
		!strings.Contains(logged, `Calling-Station-Id = "02-5E-10-00-02-0A"`) {
		t.Fatalf("the Disconnect-Request:\n%s", logged)
	}
}

// BenchmarkEAPTLSWithFreeRADIUS is EAP-TLS authentications per second
// through FreeRADIUS and provisiond's OCSP responder (one OCSP request
// each), eapol_test processes 8 at a time, all on this machine.
func BenchmarkEAPTLSWithFreeRADIUS(b *testing.B) {
	env := servertest.Start(b, func(c *server.Config) { c.OCSPAddr = "127.0.0.1:0" })
	str := func(s string) *string { return &s }
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/sites", httpapi.SiteRequest{Name: str("wifi"),
		SSID: str("Plant"), Security: str("wpa2-enterprise"), CIDR: str("10.45.0.0/24")}, nil); err != nil {
		b.Fatal(err)
	}
	port := freeUDPPort(b)
	startFreeRADIUS(b, env, port, false)
	dev, err := simulator.NewDevice(env.Mint(1, "wifi")[0])
	if err != nil {
		b.Fatal(err)
	}
	res, err := dev.Enroll(context.Background(), simulator.EnrollOptions{})
	if err != nil {
		b.Fatal(err)
	}
	join, err := dev.WiFiJoin(res.WiFi)
	if err != nil {
		b.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(dev.Key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	b.ResetTimer()
	var wg sync.WaitGroup
	var failed atomic.Int64
	work := make(chan struct{})
	for range 8 {
		wg.Go(func() {
			for range work {
				if ok, _ := eapTLS(b, port, join.EAPIdentity, "", join.CA, dev.Chain, keyPEM); !ok {
					failed.Add(1)
				}
			}
		})
	}
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d of %d authentications failed", failed.Load(), b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "auths/s")
}

func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
