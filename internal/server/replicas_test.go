package server_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// Two replicas on one etcd inventory share its CA and firmware key through
// the store; what one enrolls the other lists; a replica with a CA of its
// own, the wrong passphrase or none is refused.
func TestReplicasShareOneInventory(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	cluster := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	store := cluster.URL() + "/replicas"
	a := servertest.Start(t, func(c *server.Config) { c.Store = store })
	a.Site("hq", "10.40.0.0/24")
	bundles := a.Mint(4, "hq")
	if _, sum := simulator.Run(ctxT(t), bundles[:2], simulator.RunOptions{}); sum.Enrolled != 2 {
		t.Fatalf("through A: %+v", sum)
	}

	// B starts on an empty data directory with the cluster's passphrase:
	// it takes the CA and the firmware signing key from the store.
	// Its first start mints no admin token of its own (the cluster has
	// one); an operator copies the first replica's to use provctl --data.
	dirB := t.TempDir()
	cfgB := a.Config
	cfgB.DataDir = dirB
	first, err := server.Start(context.Background(), cfgB, servertest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dirB, server.AdminTokenFile)); !os.IsNotExist(err) {
		t.Fatalf("the second replica wrote an admin token: %v", err)
	}
	tokens, err := a.Server.Store().Tokens(context.Background())
	if err != nil || len(tokens) != 1 {
		t.Fatalf("the cluster has %d tokens (%v), want the one bootstrap admin token", len(tokens), err)
	}
	if err := os.WriteFile(filepath.Join(dirB, server.AdminTokenFile), []byte(a.AdminToken()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := servertest.Start(t, func(c *server.Config) { c.Store, c.DataDir = store, dirB })
	if !bytes.Equal(b.Server.CA().Root().Raw, a.Server.CA().Root().Raw) ||
		!bytes.Equal(b.Server.CA().Intermediate().Raw, a.Server.CA().Intermediate().Raw) {
		t.Fatal("B has a CA of its own")
	}
	var fwA, fwB httpapi.FirmwareView
	if err := a.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &fwA); err != nil {
		t.Fatal(err)
	}
	if err := b.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &fwB); err != nil || fwA.PublicKey != fwB.PublicKey {
		t.Fatalf("firmware signing keys: A %s, B %s (%v)", fwA.PublicKey, fwB.PublicKey, err)
	}
	list, _, err := b.Server.Store().Devices(context.Background(), devices.Filter{State: devices.StateProvisioned})
	if err != nil || len(list) != 2 {
		t.Fatalf("B lists %d provisioned devices (%v), want the 2 enrolled through A", len(list), err)
	}
	if _, sum := simulator.Run(ctxT(t), bundles[2:], simulator.RunOptions{Transport: "mqtt"}); sum.Enrolled != 2 {
		t.Fatalf("through B: %+v", sum)
	}
	list, _, err = a.Server.Store().Devices(context.Background(), devices.Filter{State: devices.StateProvisioned})
	if err != nil || len(list) != 4 {
		t.Fatalf("A lists %d provisioned devices (%v), want 4", len(list), err)
	}
	seen := map[string]bool{}
	for _, d := range list {
		if d.Lease == nil || seen[d.Lease.Addr.String()] {
			t.Fatalf("device %s: lease %+v (held twice or missing)", d.Serial, d.Lease)
		}
		seen[d.Lease.Addr.String()] = true
	}

	// C's data directory has a CA of its own: C refuses to start rather
	// than overwrite it or issue certificates the others do not trust.
	cfg := a.Config
	cfg.DataDir = t.TempDir()
	if _, _, err := pki.Open(pki.Config{Dir: filepath.Join(cfg.DataDir, server.CADir), Passphrase: []byte(cfg.CAPassphrase),
		DeviceLifetime: time.Hour}); err != nil {
		t.Fatal(err)
	}
	_, err = server.Start(context.Background(), cfg, servertest.Logger(t))
	if err == nil || !strings.Contains(err.Error(), "differs from the cluster's") {
		t.Fatalf("a replica with another CA: %v", err)
	}
	// D has the wrong passphrase: the cluster's keys do not open.
	cfg.DataDir, cfg.CAPassphrase = t.TempDir(), "another-passphrase-0123456789"
	if _, err = server.Start(context.Background(), cfg, servertest.Logger(t)); err == nil {
		t.Fatal("a replica with the wrong passphrase started")
	}
	// E gives none: a replica may not make one up.
	cfg.DataDir, cfg.CAPassphrase = t.TempDir(), ""
	if _, err = server.Start(context.Background(), cfg, servertest.Logger(t)); err == nil || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("a replica without a passphrase: %v", err)
	}
}
