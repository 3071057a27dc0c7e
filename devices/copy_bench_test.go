package devices_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/pki/profile"
)

// BenchmarkMigrate moves a single node's inventory of MIGRATE_DEVICES
// (default 100,000) active devices, each with its lease and indexes, into
// a real etcd (fsync on), as provisiond migrate does, and reports the time
// and what each device costs in etcd: the key and value bytes of its
// records, and etcd's database growth per device (MVCC and page overhead
// included), and what one enrollment's audit event costs (the first 5,000
// devices have one). Run it with -benchtime 1x.
func BenchmarkMigrate(b *testing.B) {
	n := 100_000
	if v, err := strconv.Atoi(os.Getenv("MIGRATE_DEVICES")); err == nil && v > 0 {
		n = v
	}
	ctx := context.Background()
	src, err := openPath(filepath.Join(b.TempDir(), "inv.db"), boltkv.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	if _, err := src.CreateSite(ctx, site("big", "10.0.0.0/12"), devices.AuditEvent{}); err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	// Each device has a certificate from a real CA, as enrollment records
	// it (serial, key hash, NotAfter), and a factory batch's UUID.
	ca, _, err := pki.Open(pki.Config{Dir: b.TempDir(), Passphrase: []byte("migrate-bench-passphrase")})
	if err != nil {
		b.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	keyHash := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	batch := uuid.NewString()
	const chunk = 2000
	for c := 0; c < n; c += chunk {
		ds := make([]devices.Device, 0, chunk)
		for i := c; i < min(c+chunk, n); i++ {
			d := devices.Device{ID: uuid.New(), Serial: fmt.Sprintf("MIG-%07d", i), TokenHash: hash("t"), Model: "SENSOR-A",
				BatchID: batch, Site: "big", State: devices.StateActive, FirmwareVersion: "1.4.2", CreatedAt: now, UpdatedAt: now,
				LastSeen: now, PublicKeyHash: keyHash[:], ConfigVersion: 1, AppliedConfigVersion: 1, Health: "ok", ProvisionedAt: now}
			leaf, err := ca.IssueDevice(csr, profile.Device{ID: d.ID, Serial: d.Serial, Model: d.Model, Site: d.Site})
			if err != nil {
				b.Fatal(err)
			}
			d.CertSerial, d.CertDER, d.CertNotAfter = fmt.Sprintf("%x", leaf.SerialNumber), leaf.Raw, leaf.NotAfter
			ds = append(ds, d)
		}
		if err := src.Load(ctx, ds, now, devices.AuditEvent{Action: "inventory.load"}); err != nil {
			b.Fatal(err)
		}
	}
	// What an enrollment's audit event costs: one for each of the first
	// auditN devices, as the enrollment service writes it.
	const auditN = 5000
	for i := range min(auditN, n) {
		serial := fmt.Sprintf("MIG-%07d", i)
		if err := src.AppendAudit(ctx, devices.AuditEvent{Actor: "device:" + serial, Action: "device.enroll", Target: serial,
			Source: "10.1.2.3:5684", Detail: map[string]string{"device_id": uuid.NewString(), "site": "big", "address": "10.0.12.34",
				"cert_serial": fmt.Sprintf("%032x", i), "transport": "coap"}}); err != nil {
			b.Fatal(err)
		}
	}
	c := etcdtest.Start(b, etcdtest.Options{Args: []string{"--quota-backend-bytes", "8589934592"}})
	cli := c.Client(b)
	sizeBefore := dbSize(b, c)
	b.ResetTimer()
	for range b.N {
		dst := etcdkv.New(cli, etcdkv.Options{Prefix: "/" + uuid.NewString()[:8] + "/"})
		start := time.Now()
		st, err := devices.Copy(ctx, dst, src, 8)
		if err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		b.ReportMetric(took.Seconds(), "s/migration")
		b.ReportMetric(float64(n)/took.Seconds(), "devices/s")
		b.ReportMetric(float64(st.Bytes)/float64(n), "kv-bytes/device")
		b.ReportMetric(float64(dbSize(b, c)-sizeBefore)/float64(n), "etcd-db-bytes/device")
		audit := st.BytesPer["auditlog"] + st.BytesPer["history"] + st.BytesPer["audithead"]
		b.ReportMetric(float64(audit)/float64(st.Per["auditlog"]), "kv-bytes/audit-event")
		var names []string
		for k := range st.BytesPer {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			b.Logf("%-10s %8d keys %10d bytes  %6.1f bytes/device", k, st.Per[k], st.BytesPer[k], float64(st.BytesPer[k])/float64(n))
		}
	}
}

func dbSize(b *testing.B, c *etcdtest.Cluster) int64 {
	cli := c.Client(b)
	st, err := cli.Status(context.Background(), c.Endpoints()[0])
	if err != nil {
		b.Fatal(err)
	}
	return st.DbSize
}
