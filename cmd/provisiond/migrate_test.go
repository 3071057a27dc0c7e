package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// A single node with enrolled, revoked and waiting devices moves into a
// cluster: the replica lists the same inventory, devices renew with the
// certificates they hold, the revoked one stays refused, a waiting one
// enrolls, the audit chains verify and the CRL numbers go on upwards.
func TestMigrateIntoCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	single := servertest.Start(t)
	single.Site("hq", "10.70.0.0/24")
	bundles := single.Mint(4, "hq")
	coapDev, _ := simulator.NewDevice(bundles[0])
	mqttDev, _ := simulator.NewDevice(bundles[1])
	gone, _ := simulator.NewDevice(bundles[2])
	for _, d := range []*simulator.Device{coapDev, gone} {
		if _, err := d.Enroll(ctx, simulator.EnrollOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mqttDev.EnrollMQTT(ctx, simulator.MQTTOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := single.Client.Do(ctx, "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{gone.Bundle.Serial}, Reason: "lost"}, nil); err != nil {
		t.Fatal(err)
	}
	single.AddFirmware("TEST", "1.0.0", []byte("an image of the single node"))
	before, _, err := single.Server.Store().Devices(ctx, devices.Filter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	oldCRL, err := x509.ParseRevocationList(single.Server.CRL())
	if err != nil {
		t.Fatal(err)
	}
	if err := single.Server.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	url := etcd.URL() + "/moved"
	t.Setenv(server.PassphraseEnv, single.Config.CAPassphrase)
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"migrate", "--from", single.DataDir, "--to", url}, &out, &errOut); err != nil {
		t.Fatalf("migrate: %v\n%s%s", err, out.String(), errOut.String())
	}
	t.Logf("%s", out.String())
	for _, want := range []string{"moved ", "devices ", "chains verify", "1 firmware manifests are the cluster's"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("migrate output lacks %q", want)
		}
	}
	// Twice is refused: the cluster has an inventory now.
	if err := run(ctx, []string{"migrate", "--from", single.DataDir, "--to", url}, &out, &errOut); !errors.Is(err, devices.ErrNotEmpty) {
		t.Errorf("a second migrate: %v, want ErrNotEmpty", err)
	}

	// A replica on an empty data directory (and the admin token, which
	// moved with the inventory).
	dir := t.TempDir()
	tok, err := os.ReadFile(filepath.Join(single.DataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, server.AdminTokenFile), tok, 0o600); err != nil {
		t.Fatal(err)
	}
	replica := servertest.Start(t, func(c *server.Config) { c.Store, c.DataDir = url, dir })
	if !bytes.Equal(replica.Server.CA().Root().Raw, single.Server.CA().Root().Raw) {
		t.Fatal("the replica has another root CA")
	}
	after, _, err := replica.Server.Store().Devices(ctx, devices.Filter{Limit: 100})
	if err != nil || len(after) != len(before) {
		t.Fatalf("replica lists %d devices (%v), the single node had %d", len(after), err, len(before))
	}
	for i := range before {
		if after[i].ID != before[i].ID || after[i].State != before[i].State || !slices.Equal(after[i].TokenHash, before[i].TokenHash) {
			t.Errorf("device %s: %s/%s after, %s/%s before", before[i].Serial, after[i].ID, after[i].State, before[i].ID, before[i].State)
		}
	}
	var fw httpapi.FirmwareView
	if err := replica.Client.Do(ctx, "GET", "/api/v1/firmware", nil, &fw); err != nil || len(fw.Images) != 1 {
		t.Errorf("the replica lists %d firmware images (%v), want the single node's one", len(fw.Images), err)
	}
	at := func(d *simulator.Device) *simulator.Device {
		d.Bundle.Endpoints = replica.Info.Endpoints
		return d
	}
	// Renewals with the certificates the devices hold.
	if _, err := at(coapDev).RenewLease(ctx, simulator.EnrollOptions{}); err != nil {
		t.Errorf("lease renewal over DTLS with the old certificate: %v", err)
	}
	s, err := at(mqttDev).ConnectMQTT(ctx, simulator.MQTTOptions{})
	if err != nil {
		t.Fatalf("MQTT with the old certificate: %v", err)
	}
	if err := s.RenewCertificate(ctx); err != nil {
		t.Errorf("certificate renewal: %v", err)
	}
	s.Close()
	if _, err := at(gone).RenewLease(ctx, simulator.EnrollOptions{}); err == nil {
		t.Error("the revoked device renewed its lease")
	}
	waiting, _ := simulator.NewDevice(bundles[3])
	if _, err := at(waiting).Enroll(ctx, simulator.EnrollOptions{Format: wire.JSON}); err != nil {
		t.Errorf("a device that had not enrolled yet: %v", err)
	}
	if _, err := replica.Server.Store().VerifyAudit(ctx); err != nil {
		t.Errorf("audit after the move: %v", err)
	}
	newCRL, err := x509.ParseRevocationList(replica.Server.CRL())
	if err != nil {
		t.Fatal(err)
	}
	if newCRL.Number.Cmp(oldCRL.Number) <= 0 || len(newCRL.RevokedCertificateEntries) != len(oldCRL.RevokedCertificateEntries) {
		t.Errorf("CRL #%v with %d entries after the move, #%v with %d before", newCRL.Number, len(newCRL.RevokedCertificateEntries),
			oldCRL.Number, len(oldCRL.RevokedCertificateEntries))
	}
}
