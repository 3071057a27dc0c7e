package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

var tunnelPassword = regexp.MustCompile(`Tunnel-Password(?::\d+)? = "([^"]*)"`)

// macAuth is an access point's MAC authorisation of a station, sent with
// FreeRADIUS's radclient as hostapd sends it (User-Name and User-Password
// the bare MAC, Calling-Station-Id the dashed one): whether it was
// accepted, and the Tunnel-Password of the reply (the station's PSK).
func macAuth(t testing.TB, port int, mac string) (bool, string, string) {
	t.Helper()
	bin := testtools.Need(t, "radclient")
	bare := strings.ReplaceAll(mac, ":", "")
	dashed := strings.ToUpper(strings.ReplaceAll(mac, ":", "-"))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-x", "-r", "1", "-t", "10", fmt.Sprintf("127.0.0.1:%d", port), "auth", radiusSecret)
	cmd.Stdin = strings.NewReader(fmt.Sprintf("User-Name = %q, User-Password = %q, Calling-Station-Id = %q, NAS-IP-Address = 127.0.0.1, Service-Type = Call-Check\n",
		bare, bare, dashed))
	raw, _ := cmd.CombinedOutput()
	out := string(raw)
	accepted := strings.Contains(out, "Received Access-Accept")
	if !accepted && !strings.Contains(out, "Received Access-Reject") {
		t.Fatalf("radclient got no answer:\n%s", out)
	}
	psk := ""
	if m := tunnelPassword.FindStringSubmatch(out); m != nil {
		psk = m[1]
	}
	return accepted, psk, out
}

// Per-device Wi-Fi passphrases with Debian's FreeRADIUS configured with
// docs/radius (rest_provisiond): each device of a site with per-device
// PSKs gets its own passphrase in its config; an access point's MAC
// authorisation of the device (radclient) is accepted with exactly that
// passphrase as Tunnel-Password; an unknown MAC, a device of a site
// outside the radius token's and, after provctl revoke, the revoked
// device are rejected with none. The radius token reads nothing else.
func TestPerDevicePSKWithFreeRADIUS(t *testing.T) {
	t.Parallel()                                                                      // waits on other processes: overlaps with the other waiting tests
	env := servertest.Start(t, func(c *server.Config) { c.OCSPAddr = "127.0.0.1:0" }) // the EAP-TLS half of the configuration asks it
	str := func(s string) *string { return &s }
	yes := true
	for _, site := range []httpapi.SiteRequest{
		{Name: str("ppsk"), SSID: str("Plant"), Security: str("wpa2-psk"), Passphrase: str("site-wide-passphrase"), PerDevicePSK: &yes, CIDR: str("10.46.0.0/24")},
		{Name: str("elsewhere"), SSID: str("Other"), Security: str("wpa2-psk"), Passphrase: str("other-passphrase"), PerDevicePSK: &yes, CIDR: str("10.47.0.0/24")},
	} {
		if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/sites", site, nil); err != nil {
			t.Fatal(err)
		}
	}
	token := radiusToken(t, env, "ppsk")
	port := freeUDPPort(t)
	startFreeRADIUSWith(t, env, port, true, token)

	enroll := func(site, mac string) (devices.Device, simulator.WiFiJoin) {
		t.Helper()
		dev, err := simulator.NewDevice(env.Mint(1, site)[0])
		if err != nil {
			t.Fatal(err)
		}
		dev.MAC = mac
		res, err := dev.Enroll(context.Background(), simulator.EnrollOptions{})
		if err != nil {
			t.Fatal(err)
		}
		join, err := dev.WiFiJoin(res.WiFi)
		if err != nil {
			t.Fatalf("the device cannot join with its config %+v: %v", res.WiFi, err)
		}
		d, err := env.Server.Store().DeviceBySerial(context.Background(), dev.Bundle.Serial)
		if err != nil {
			t.Fatal(err)
		}
		return d, join
	}
	a, joinA := enroll("ppsk", "02:5e:10:00:03:01")
	_, joinB := enroll("ppsk", "02:5e:10:00:03:02")
	_, joinC := enroll("elsewhere", "02:5e:10:00:03:03")
	for _, p := range []string{joinA.Passphrase, joinB.Passphrase, joinC.Passphrase} {
		if len(p) != 26 || p == "site-wide-passphrase" {
			t.Fatalf("not a per-device passphrase: %q", p)
		}
	}
	if joinA.Passphrase == joinB.Passphrase {
		t.Fatal("two devices got the same passphrase")
	}
	for mac, want := range map[string]string{"02:5e:10:00:03:01": joinA.Passphrase, "02:5e:10:00:03:02": joinB.Passphrase} {
		ok, psk, out := macAuth(t, port, mac)
		if !ok || psk != want {
			t.Fatalf("MAC authorisation of %s: accepted %v with %q, want %q:\n%s", mac, ok, psk, want, out)
		}
	}
	for _, mac := range []string{"02:5e:10:00:03:99", "02:5e:10:00:03:03"} { // unknown; outside the token's sites
		if ok, psk, out := macAuth(t, port, mac); ok || psk != "" {
			t.Fatalf("MAC authorisation of %s was accepted with %q:\n%s", mac, psk, out)
		}
	}
	// The radius token can do nothing else.
	rc, err := httpapi.NewClient("https://"+env.Server.HTTPAddr().String(), token, env.Server.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(context.Background(), http.MethodGet, "/api/v1/devices", nil, nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("a radius token listed devices: %v", err)
	}
	// Revoked: rejected at its next association, with no passphrase.
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: []string{a.Serial}, Reason: "stolen"}, nil); err != nil {
		t.Fatal(err)
	}
	if ok, psk, out := macAuth(t, port, "02:5e:10:00:03:01"); ok || psk != "" {
		t.Fatalf("a revoked device's MAC authorisation was accepted with %q:\n%s", psk, out)
	}
	if ok, psk, _ := macAuth(t, port, "02:5e:10:00:03:02"); !ok || psk != joinB.Passphrase {
		t.Fatal("revoking one device closed the Wi-Fi of another")
	}
}

// BenchmarkMACAuthWithFreeRADIUS is MAC authorisations per second of a
// per-device PSK site through FreeRADIUS, its rest module and provisiond's
// HTTPS API (one look-up by MAC and one unsealing each): radclient sends
// b.N Access-Requests, 32 outstanding, for 16 devices, all on this machine.
func BenchmarkMACAuthWithFreeRADIUS(b *testing.B) {
	env := servertest.Start(b, func(c *server.Config) { c.OCSPAddr = "127.0.0.1:0" })
	str := func(s string) *string { return &s }
	yes := true
	if err := env.Client.Do(context.Background(), http.MethodPost, "/api/v1/sites", httpapi.SiteRequest{Name: str("ppsk"), SSID: str("Plant"),
		Security: str("wpa2-psk"), Passphrase: str("site-wide-passphrase"), PerDevicePSK: &yes, CIDR: str("10.48.0.0/24")}, nil); err != nil {
		b.Fatal(err)
	}
	port := freeUDPPort(b)
	startFreeRADIUS(b, env, port, false)
	var macs []string
	for i, bundle := range env.Mint(16, "ppsk") {
		dev, err := simulator.NewDevice(bundle)
		if err != nil {
			b.Fatal(err)
		}
		dev.MAC = fmt.Sprintf("02:5e:10:00:05:%02x", i)
		if _, err := dev.Enroll(context.Background(), simulator.EnrollOptions{}); err != nil {
			b.Fatal(err)
		}
		macs = append(macs, dev.MAC)
	}
	var reqs strings.Builder
	for i := range b.N {
		mac := macs[i%len(macs)]
		bare := strings.ReplaceAll(mac, ":", "")
		fmt.Fprintf(&reqs, "User-Name = %q, User-Password = %q, Calling-Station-Id = %q, NAS-IP-Address = 127.0.0.1\n\n",
			bare, bare, strings.ToUpper(strings.ReplaceAll(mac, ":", "-")))
	}
	file := filepath.Join(b.TempDir(), "requests")
	if err := os.WriteFile(file, []byte(reqs.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	bin := testtools.Need(b, "radclient")
	b.ResetTimer()
	out, _ := exec.Command(bin, "-s", "-q", "-p", "32", "-r", "1", "-t", "10", "-f", file,
		fmt.Sprintf("127.0.0.1:%d", port), "auth", radiusSecret).CombinedOutput()
	b.StopTimer()
	if !strings.Contains(string(out), fmt.Sprintf("Accepted      : %d", b.N)) {
		b.Fatalf("not every MAC authorisation was accepted:\n%s", out)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "auths/s")
}
