package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/testtools"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestRevocationEndToEnd(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	a, _ := simulator.NewDevice(bundles[0]) // CoAP device with a live mutual-DTLS session
	b, _ := simulator.NewDevice(bundles[1]) // MQTT device with a live session
	c, _ := simulator.NewDevice(bundles[2]) // bystander
	if _, err := a.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	aCert, _ := a.TLSCertificate()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	dtlsConn, err := coapdtls.Dial(env.CoAPS(), &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{*aCert}, ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer dtlsConn.Close()
	if resp, err := dtlsConn.Post(ctxT(t), "/lease", message.AppCBOR, bytes.NewReader(nil)); err != nil || resp.Code() != codes.Changed {
		t.Fatalf("lease on the live session before revocation: %v", err)
	}
	session, err := b.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	inUse, _ := env.Server.Store().LeasesInUse(context.Background(), "hq", time.Now())

	start := time.Now()
	var res httpapi.RevokeResponse
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: []string{a.Bundle.Serial, b.Enrollment.DeviceID}, Reason: "stolen from the lobby"}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Revoked != 2 {
		t.Fatalf("revoked %d", res.Revoked)
	}
	// Both live sessions are cut within a second.
	waitWithin(t, time.Second, func() bool { return !session.Client().IsConnectionOpen() }, "MQTT session cut")
	waitWithin(t, time.Second, func() bool {
		ctx, cancel := ctxShort(200 * time.Millisecond)
		defer cancel()
		_, err := dtlsConn.Post(ctx, "/lease", message.AppCBOR, bytes.NewReader(nil))
		return err != nil
	}, "DTLS session cut")
	t.Logf("sessions cut %v after the revocation request", time.Since(start))

	// Everything after is refused.
	if _, err := b.ConnectMQTT(ctxT(t), simulator.MQTTOptions{}); err == nil {
		t.Error("revoked device reconnected over MQTT")
	}
	if _, err := a.RenewLease(ctxT(t), simulator.EnrollOptions{}); simulator.Reason(err) != "transport" {
		t.Errorf("revoked device's new DTLS handshake: %v", err)
	}
	for _, d := range []*simulator.Device{a, b} {
		again, _ := simulator.NewDevice(d.Bundle)
		if _, err := again.Enroll(ctxT(t), simulator.EnrollOptions{}); simulator.Reason(err) != "revoked" {
			t.Errorf("%s re-enrolls: %v, want 4.03 revoked", d.Bundle.Serial, err)
		}
		stored, _ := env.Server.Store().DeviceBySerial(context.Background(), d.Bundle.Serial)
		if stored.State != devices.StateRevoked || stored.Lease != nil {
			t.Errorf("%s: state %s lease %v", d.Bundle.Serial, stored.State, stored.Lease)
		}
	}
	if now, _ := env.Server.Store().LeasesInUse(context.Background(), "hq", time.Now()); now != inUse-2 {
		t.Errorf("leases in use %d, want %d (both released)", now, inUse-2)
	}
	if _, err := c.RenewLease(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Errorf("bystander: %v", err)
	}
	evs, _ := env.Server.Store().Audit(context.Background(), devices.AuditQuery{Ascending: true, Limit: 1000})
	n := 0
	for _, ev := range evs {
		if ev.Action == "device.revoke" && ev.Detail["reason"] == "stolen from the lobby" && strings.HasPrefix(ev.Actor, "token:") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d device.revoke audit events with the reason and actor, want 2", n)
	}

	// The CRL, over HTTPS and CoAP, lists both certificates.
	var crlDER []byte
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/crl", nil, &crlDER); err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(crlDER)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(env.Server.CA().Intermediate()); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	listed := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		listed[fmt.Sprintf("%x", e.SerialNumber)] = true
	}
	for _, d := range []*simulator.Device{a, b} {
		if !listed[fmt.Sprintf("%x", d.Chain[0].SerialNumber)] {
			t.Errorf("CRL does not list %s", d.Bundle.Serial)
		}
	}
	if listed[fmt.Sprintf("%x", c.Chain[0].SerialNumber)] {
		t.Error("CRL lists the bystander")
	}
	if got := rawRequest(t, env, codes.GET, "/crl", message.AppOctets, nil, nil); got.Code != codes.Content || !bytes.Equal(got.Body, crlDER) {
		t.Errorf("CoAP /crl: %v, %d bytes", got.Code, len(got.Body))
	}
	opensslRevocation(t, env, crlDER, a, c)

	// Re-opening gives a fresh claim token; the device enrolls again with a new key.
	var re httpapi.ReopenResponse
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/devices/"+a.Bundle.Serial+"/reopen", nil, &re); err != nil {
		t.Fatal(err)
	}
	if re.ClaimToken == "" || re.ClaimToken == a.Bundle.ClaimToken || re.Bundle.ClaimToken != re.ClaimToken {
		t.Fatalf("reopen: %+v", re)
	}
	fresh, _ := simulator.NewDevice(re.Bundle)
	res2, err := fresh.Enroll(ctxT(t), simulator.EnrollOptions{Format: wire.JSON})
	if err != nil {
		t.Fatalf("enroll after reopen: %v", err)
	}
	if res2.DeviceID != a.Enrollment.DeviceID || fresh.Chain[0].SerialNumber.Cmp(a.Chain[0].SerialNumber) == 0 {
		t.Errorf("after reopen: same identity %v, new certificate %v", res2.DeviceID == a.Enrollment.DeviceID, fresh.Chain[0].SerialNumber)
	}
	if old, _ := simulator.NewDevice(a.Bundle); old != nil {
		if _, err := old.Enroll(ctxT(t), simulator.EnrollOptions{}); simulator.Reason(err) != "unauthorized" && simulator.Reason(err) != "token_used" {
			t.Errorf("old claim token after reopen: %v", err)
		}
	}
}

// opensslRevocation checks the CRL and OCSP with the openssl CLI.
func opensslRevocation(t *testing.T, env *servertest.Env, crlDER []byte, revoked, good *simulator.Device) {
	t.Helper()
	openssl := testtools.Need(t, "openssl")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o600)
		return p
	}
	crl := write("crl.der", crlDER)
	out, err := exec.Command(openssl, "crl", "-inform", "DER", "-in", crl, "-noout", "-text").CombinedOutput()
	want := strings.ToUpper(fmt.Sprintf("%x", revoked.Chain[0].SerialNumber))
	if err != nil || !strings.Contains(strings.ToUpper(string(out)), want) {
		t.Errorf("openssl crl does not show %s: %v\n%s", want, err, out)
	}
	inter := write("inter.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: env.Server.CA().Intermediate().Raw}))
	root := write("root.pem", env.Server.CA().RootPEM())
	url := "https://" + env.Server.HTTPAddr().String() + "/ocsp"
	for _, c := range []struct {
		d    *simulator.Device
		want string
	}{{revoked, ": revoked"}, {good, ": good"}} {
		leaf := write("leaf.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.d.Chain[0].Raw}))
		out, err := exec.Command(openssl, "ocsp", "-issuer", inter, "-cert", leaf, "-url", url, "-CAfile", root,
			"-VAfile", inter).CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("openssl ocsp for %s: %v\n%s", c.d.Bundle.Serial, err, out)
		}
	}
}

func waitWithin(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxShort(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
