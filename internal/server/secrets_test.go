package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
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
