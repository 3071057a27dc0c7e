package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
)

// Two replicas on one etcd inventory: what one enrolls the other lists, and
// a replica started with another CA refuses the inventory rather than issue
// certificates the first does not trust.
func TestReplicasShareOneInventory(t *testing.T) {
	cluster := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	store := cluster.URL() + "/replicas"
	a := servertest.Start(t, func(c *server.Config) { c.Store = store })
	a.Site("hq", "10.40.0.0/24")
	bundles := a.Mint(4, "hq")
	if _, sum := simulator.Run(ctxT(t), bundles[:2], simulator.RunOptions{}); sum.Enrolled != 2 {
		t.Fatalf("through A: %+v", sum)
	}

	// B gets A's CA (its directory and the cluster's passphrase).
	dirB := t.TempDir()
	copyDir(t, filepath.Join(a.DataDir, server.CADir), filepath.Join(dirB, server.CADir))
	b := servertest.Start(t, func(c *server.Config) { c.Store, c.DataDir = store, dirB })
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

	// C has a CA of its own: it must not start on this inventory.
	cfg := a.Config
	cfg.DataDir = t.TempDir()
	_, err = server.Start(context.Background(), cfg, servertest.Logger(t))
	if !errors.Is(err, devices.ErrOtherCA) || !strings.Contains(err.Error(), "cluster.md") {
		t.Fatalf("a replica with another CA: %v, want ErrOtherCA", err)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}
