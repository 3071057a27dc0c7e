package server_test

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// BenchmarkEnrollDTLS measures whole enrollments over DTLS on loopback, the
// device side (simulator) running on the same machine: handshake, CSR,
// signing, lease allocation and the bbolt commit. docs/performance.md.
func BenchmarkEnrollDTLS(b *testing.B) { benchEnroll(b, "coap") }

// BenchmarkEnrollMQTT is the same over MQTT/TLS with the embedded broker: a
// TLS handshake, CONNECT, SUBSCRIBE, PUBLISH and the reply per device.
func BenchmarkEnrollMQTT(b *testing.B) { benchEnroll(b, "mqtt") }

// BenchmarkEnrollStore is BenchmarkEnrollDTLS with the inventory in bbolt
// and in a one-member etcd (fsync on, its own process on this machine), in
// one run, so the two compare as a ratio; on etcd it also reports the
// requests and conflict re-runs per enrollment. docs/performance.md.
func BenchmarkEnrollStore(b *testing.B) {
	b.Run("bbolt", func(b *testing.B) { benchEnrollOn(b, "coap", "") })
	b.Run("etcd", func(b *testing.B) {
		c := etcdtest.Start(b, etcdtest.Options{})
		benchEnrollOn(b, "coap", c.URL())
	})
}

func benchEnroll(b *testing.B, transport string) { benchEnrollOn(b, transport, "") }

// BenchmarkEnrollTransports compares, in one run, whole enrollments over
// the custom CoAP /enroll (claim token) and the standard protocols: EST
// over HTTPS with HTTP Basic and with a factory certificate, and EST-coaps
// with a factory certificate. An EST enrollment is what a stock client
// does: /cacerts, /simpleenroll, then the config over mutual TLS (two
// handshakes); EST-coaps the same over DTLS. docs/performance.md.
func BenchmarkEnrollTransports(b *testing.B) {
	for _, c := range []struct {
		name, transport string
		idevid, psk     bool
	}{{"coap", "coap", false, false}, {"est-basic", "est", false, false}, {"est-idevid", "est", true, false},
		{"estcoaps-idevid", "estcoaps", true, false}, {"lwm2m-psk", "lwm2m", false, true}, {"lwm2m-idevid", "lwm2m", true, false}} {
		b.Run(c.name, func(b *testing.B) {
			env := servertest.Start(b)
			env.Site("bench", "10.0.0.0/8")
			if c.transport == "lwm2m" {
				p := &devices.LwM2MProfile{ServerURI: "coaps://lwm2m.example.net", SecurityMode: devices.LwM2MCertificate}
				if err := env.Client.Do(context.Background(), http.MethodPatch, "/api/v1/sites/bench", httpapi.SiteRequest{LwM2M: p}, nil); err != nil {
					b.Fatal(err)
				}
			}
			m, err := env.Client.MintWith(context.Background(), httpapi.MintOptions{Model: "TEST", Count: b.N, Site: "bench", LwM2MPSK: c.psk})
			if err != nil {
				b.Fatal(err)
			}
			if c.idevid {
				ca, err := mfr.New("Bench Manufacturer")
				if err == nil {
					_, err = env.Client.RegisterIDevIDs(context.Background(), &m, ca)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			_, sum := simulator.Run(context.Background(), m.Bundles, simulator.RunOptions{Concurrency: 64, Attempts: 1, Transport: c.transport})
			b.StopTimer()
			if sum.Failed > 0 {
				b.Fatalf("%d of %d failed: %v", sum.Failed, sum.Devices, sum.Reasons)
			}
			b.ReportMetric(sum.PerSecond, "enroll/s")
			b.ReportMetric(float64(sum.P50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(sum.P99.Microseconds())/1000, "p99-ms")
		})
	}
}

func benchEnrollOn(b *testing.B, transport, store string) {
	env := servertest.Start(b, func(c *server.Config) {
		if store != "" {
			c.Store = store
		}
	})
	env.Site("bench", "10.0.0.0/8")
	bundles := env.Mint(b.N, "bench")
	before, _ := env.Server.StoreStats()
	b.ResetTimer()
	_, sum := simulator.Run(context.Background(), bundles, simulator.RunOptions{Concurrency: 64, Attempts: 1, Transport: transport})
	b.StopTimer()
	if sum.Failed > 0 {
		b.Fatalf("%d of %d failed: %v", sum.Failed, sum.Devices, sum.Reasons)
	}
	b.ReportMetric(sum.PerSecond, "enroll/s")
	b.ReportMetric(float64(sum.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(sum.P99.Microseconds())/1000, "p99-ms")
	if after, ok := env.Server.StoreStats(); ok {
		n := float64(sum.Enrolled)
		b.ReportMetric(float64(after.Reads-before.Reads)/n, "reads/enroll")
		b.ReportMetric(float64(after.Txns-before.Txns)/n, "txns/enroll")
		b.ReportMetric(float64(after.Reruns-before.Reruns)/n, "reruns/enroll")
		b.ReportMetric(float64(after.Fenced-before.Fenced), "fenced")
	}
	if store == "" {
		// The store per device (issue 17): every bucket's pages, the bytes
		// in use and the bytes allocated, over the devices enrolled.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := env.Server.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		inUse, alloc := bboltBytes(b, filepath.Join(env.DataDir, server.InventoryFile))
		b.ReportMetric(float64(inUse)/float64(sum.Enrolled), "store-bytes/device")
		b.ReportMetric(float64(alloc)/float64(sum.Enrolled), "store-page-bytes/device")
	}
}

// bboltBytes sums the bytes in use and the bytes of pages allocated over
// every bucket of a bbolt file (leaf and branch pages).
func bboltBytes(b *testing.B, path string) (inUse, alloc int) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bolt.Bucket) error {
			st := bk.Stats()
			inUse += st.LeafInuse + st.BranchInuse
			alloc += st.LeafAlloc + st.BranchAlloc
			if st.KeyN > 0 {
				b.Logf("%-12s %7d keys %9d bytes in use (branch pages %7d) %9d allocated", name, st.KeyN,
					st.LeafInuse+st.BranchInuse, st.BranchInuse, st.LeafAlloc+st.BranchAlloc)
			}
			return nil
		})
	}); err != nil {
		b.Fatal(err)
	}
	return inUse, alloc
}
