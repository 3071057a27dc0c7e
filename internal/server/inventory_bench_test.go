package server_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"math/big"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices/kv/boltkv"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// BenchmarkLargeInventory measures provisiond over a large inventory,
// generated straight into the store (devices.Store.Load) rather than
// enrolled one by one: INVENTORY_DEVICES devices (default 1,000,000) in 100
// sites, 1,000 batches, 5 models and 10 firmware versions; 85 % active,
// 10 % provisioned, 4 % claimed, 1 % revoked; every enrolled device has a
// real-sized certificate and a lease. INVENTORY_DIR keeps the generated data
// directory for later runs (generation takes minutes at a million).
//
// It reports the store's bytes per device, the server's start time on that
// store, and the latency of one page (100 devices) of filtered listings
// through the HTTPS API (a first page and, when there is one, the next);
// ns/op is the time for both.
func BenchmarkLargeInventory(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("INVENTORY_DEVICES")); err == nil && v > 0 {
		n = v
	}
	dir := os.Getenv("INVENTORY_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	useDir := func(c *server.Config) { c.DataDir = dir }
	marker := filepath.Join(dir, fmt.Sprintf("generated-%d", n))
	if _, err := os.Stat(marker); err != nil {
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			b.Fatalf("%s holds another data directory; give INVENTORY_DIR an empty or generated one", dir)
		}
		t0 := time.Now()
		generateInventory(b, useDir, n)
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		b.Logf("generated %d devices in %v", n, time.Since(t0).Round(time.Second))
	}
	st, err := os.Stat(filepath.Join(dir, server.InventoryFile))
	if err != nil {
		b.Fatal(err)
	}

	t0 := time.Now()
	env := servertest.Start(b, useDir)
	start := time.Since(t0)

	rng := mrand.New(mrand.NewPCG(7, 8))
	site := func() string { return fmt.Sprintf("site-%03d", rng.IntN(100)) }
	filters := []func() url.Values{
		func() url.Values { return url.Values{"site": {site()}} },
		func() url.Values { return url.Values{"site": {site()}, "state": {"active"}} },
		func() url.Values { return url.Values{"state": {"revoked"}} },
		func() url.Values { return url.Values{"site": {site()}, "state": {"revoked"}} },
		func() url.Values {
			return url.Values{"model": {fmt.Sprintf("model-%d", rng.IntN(5))}, "firmware": {fmt.Sprintf("1.%d.0", rng.IntN(10))}}
		},
		func() url.Values { return url.Values{"batch": {fmt.Sprintf("batch-%04d", rng.IntN(1000))}} },
		func() url.Values { return url.Values{"site": {site()}, "state": {"claimed"}, "model": {"model-0"}} },
		func() url.Values { return url.Values{"site": {site()}, "not_seen_within": {"24h"}} },
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		q := filters[i%len(filters)]()
		q.Set("limit", "100")
		var page struct {
			Devices []httpapi.DeviceView `json:"devices"`
			Next    string               `json:"next"`
		}
		// The first page, and when there is one the next, through the cursor.
		for p := 0; p < 2 && (p == 0 || page.Next != ""); p++ {
			if p == 1 {
				q.Set("after", page.Next)
			}
			t := time.Now()
			if err := env.Client.Do(context.Background(), "GET", "/api/v1/devices?"+q.Encode(), nil, &page); err != nil {
				b.Fatalf("list %v: %v", q, err)
			}
			lat = append(lat, time.Since(t))
		}
	}
	b.StopTimer()
	// What an operator's dashboard asks for: a site view and a scrape.
	t1 := time.Now()
	var sv httpapi.SiteView
	if err := env.Client.Do(context.Background(), "GET", "/api/v1/sites/site-042", nil, &sv); err != nil {
		b.Fatal(err)
	}
	siteView := time.Since(t1)
	t1 = time.Now()
	var raw []byte
	if err := env.Client.Do(context.Background(), "GET", "/metrics", nil, &raw); err != nil {
		b.Fatal(err)
	}
	scrape := time.Since(t1)
	b.ReportMetric(float64(siteView.Microseconds())/1000, "site-view-ms")
	b.ReportMetric(float64(scrape.Microseconds())/1000, "metrics-scrape-ms")
	slices.Sort(lat)
	b.ReportMetric(float64(st.Size())/float64(n), "store-bytes/device")
	b.ReportMetric(start.Seconds(), "start-s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "page-p50-ms")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds())/1000, "page-p99-ms")
}

// generateInventory writes n devices into a fresh data directory: the
// server creates its CA and sites, one device is enrolled for real to get a
// certificate of the true size, then the store is filled with Load.
func generateInventory(b *testing.B, useDir func(*server.Config), n int) {
	env := servertest.Start(b, useDir)
	for i := range 100 {
		env.Site(fmt.Sprintf("site-%03d", i), fmt.Sprintf("10.%d.0.0/16", i))
	}
	bundles := env.Mint(1, "site-000")
	d, err := simulator.NewDevice(bundles[0])
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.Enroll(context.Background(), simulator.EnrollOptions{}); err != nil {
		b.Fatal(err)
	}
	real, err := env.Server.Store().DeviceBySerial(context.Background(), bundles[0].Serial)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := env.Server.Shutdown(ctx); err != nil {
		b.Fatal(err)
	}

	s, err := server.OpenInventory(context.Background(), filepath.Join(env.DataDir, server.InventoryFile), boltkv.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rng := mrand.New(mrand.NewPCG(1, 2))
	now := time.Now().UTC()
	const chunk = 20_000
	for done := 0; done < n; done += chunk {
		ds := make([]devices.Device, min(chunk, n-done))
		for j := range ds {
			i := done + j
			serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
			d := devices.Device{
				ID: uuid.New(), Serial: fmt.Sprintf("INV-%08d", i), Model: fmt.Sprintf("model-%d", i%5),
				BatchID: fmt.Sprintf("batch-%04d", (i/1000)%1000), Site: fmt.Sprintf("site-%03d", i%100),
				TokenHash: real.TokenHash, MAC: fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i)),
				CreatedAt: now.Add(-30 * 24 * time.Hour), UpdatedAt: now, Rev: 3,
			}
			switch p := rng.IntN(100); {
			case p < 4:
				d.State = devices.StateClaimed
			default:
				d.State = devices.StateActive
				if p < 14 {
					d.State = devices.StateProvisioned
				} else if p == 99 {
					d.State = devices.StateRevoked
				}
				d.CertSerial, d.CertDER, d.PublicKeyHash, d.CertNotAfter = fmt.Sprintf("%x", serial), real.CertDER, real.PublicKeyHash, real.CertNotAfter
				d.FirmwareVersion = fmt.Sprintf("1.%d.0", rng.IntN(10))
				d.ConfigVersion, d.ProvisionedAt = 1, now.Add(-7*24*time.Hour)
				if d.State == devices.StateActive {
					d.AppliedConfigVersion, d.Health = 1, "ok"
					d.LastSeen = now.Add(-time.Duration(rng.IntN(48*60)) * time.Minute)
				}
			}
			ds[j] = d
		}
		if err := s.Load(context.Background(), ds, now, devices.AuditEvent{Action: "inventory.load", Actor: "benchmark"}); err != nil {
			b.Fatal(err)
		}
	}
}
