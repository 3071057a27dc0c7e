package devices_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }

var prefixes atomic.Int64

// open opens an empty inventory: a bbolt file, or a keyspace of its own on
// the package's etcd when PROVISIOND_TEST_STORE=etcd.
func open(t testing.TB) *devices.Store {
	t.Helper()
	if c := etcdtest.Shared(); c != nil {
		db := etcdkv.New(c.Client(t), etcdkv.Options{Prefix: fmt.Sprintf("/devices-test/%d/", prefixes.Add(1))})
		s, err := devices.New(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s, err := openPath(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openPath opens the inventory in a bbolt file, as the server does.
func openPath(path string, opts boltkv.Options) (*devices.Store, error) {
	opts.Buckets = devices.Buckets
	db, err := boltkv.Open(path, opts)
	if err != nil {
		return nil, err
	}
	s, err := devices.New(context.Background(), db)
	if err != nil {
		db.Close()
	}
	return s, err
}

func site(name, cidr string) devices.Site {
	return devices.Site{Name: name, SSID: "s", Security: devices.SecurityWPA2PSK, Passphrase: "12345678", CIDR: netip.MustParsePrefix(cidr)}
}

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func importOne(t testing.TB, s *devices.Store, serial, siteName string) devices.Device {
	t.Helper()
	_, res, err := s.ImportBatch(context.Background(), devices.Batch{ID: uuid.NewString(), Site: siteName},
		[]devices.ImportRow{{Serial: serial, Model: "M", TokenHash: hash(serial)}}, devices.AuditEvent{Action: "batch.import"})
	if err != nil || res[0].Status != devices.RowCreated {
		t.Fatalf("import %s: %v %+v", serial, err, res)
	}
	d, err := s.DeviceBySerial(context.Background(), serial)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func provision(s *devices.Store, d devices.Device, now time.Time) (devices.Device, error) {
	return s.Provision(context.Background(), devices.Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: now,
		Apply: func(x *devices.Device) { x.State = devices.StateProvisioned }})
}

func TestSiteValidation(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*devices.Site)
		ok   bool
	}{
		{"valid", func(*devices.Site) {}, true},
		{"name with slash", func(s *devices.Site) { s.Name = "a/b" }, false},
		{"name dot-dot", func(s *devices.Site) { s.Name = ".." }, false},
		{"no ssid", func(s *devices.Site) { s.SSID = "" }, false},
		{"ssid over 32 bytes", func(s *devices.Site) { s.SSID = "0123456789012345678901234567890123" }, false},
		{"unknown security", func(s *devices.Site) { s.Security = "wep" }, false},
		{"short passphrase", func(s *devices.Site) { s.Passphrase = "short" }, false},
		{"IPv6 pool", func(s *devices.Site) { s.CIDR = netip.MustParsePrefix("2001:db8::/64") }, false},
		{"host bits set", func(s *devices.Site) { s.CIDR = netip.MustParsePrefix("10.0.0.1/24") }, false},
		{"/31 too small", func(s *devices.Site) { s.CIDR = netip.MustParsePrefix("10.0.0.0/31") }, false},
		{"gateway outside", func(s *devices.Site) { s.Gateway = netip.MustParseAddr("10.9.9.9") }, false},
		{"gateway is broadcast", func(s *devices.Site) { s.Gateway = netip.MustParseAddr("10.0.0.255") }, false},
		{"lease too short", func(s *devices.Site) { s.LeaseTTL = time.Second }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := site("hq", "10.0.0.0/24")
			c.mod(&s)
			err := s.Validate()
			if (err == nil) != c.ok || (err != nil && !errors.Is(err, devices.ErrInvalid)) {
				t.Errorf("Validate() = %v, want ok=%v", err, c.ok)
			}
		})
	}
}

func TestPoolNeverHandsOutReservedAddresses(t *testing.T) {
	s := open(t)
	if _, err := s.CreateSite(context.Background(), site("p", "10.0.0.0/29"), devices.AuditEvent{}); err != nil { // 8 addresses, 5 leasable
		t.Fatal(err)
	}
	now := time.Now()
	got := map[netip.Addr]bool{}
	for i := range 5 {
		d, err := provision(s, importOne(t, s, "D"+string(rune('A'+i)), "p"), now)
		if err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
		got[d.Lease.Addr] = true
	}
	for _, reserved := range []string{"10.0.0.0", "10.0.0.1", "10.0.0.7"} {
		if got[netip.MustParseAddr(reserved)] {
			t.Errorf("leased reserved address %s", reserved)
		}
	}
	if len(got) != 5 {
		t.Errorf("%d distinct addresses, want 5", len(got))
	}
	last := importOne(t, s, "DZ", "p")
	before, _ := s.Digest(context.Background())
	if _, err := provision(s, last, now); !errors.Is(err, devices.ErrPoolExhausted) {
		t.Fatalf("sixth device: %v, want ErrPoolExhausted", err)
	}
	if after, _ := s.Digest(context.Background()); after != before {
		t.Error("a failed provisioning changed the store")
	}
}

func TestExpiredLeaseIsReclaimed(t *testing.T) {
	s := open(t)
	st := site("p", "10.0.0.0/30") // one leasable address: .2 (gateway .1)
	st.LeaseTTL = time.Minute
	if _, err := s.CreateSite(context.Background(), st, devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a, err := provision(s, importOne(t, s, "A", "p"), now)
	if err != nil {
		t.Fatal(err)
	}
	b := importOne(t, s, "B", "p")
	if _, err := provision(s, b, now.Add(30*time.Second)); !errors.Is(err, devices.ErrPoolExhausted) {
		t.Fatalf("before expiry: %v, want ErrPoolExhausted", err)
	}
	b, err = provision(s, b, now.Add(2*time.Minute))
	if err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if b.Lease.Addr != a.Lease.Addr {
		t.Errorf("B got %s, want the reclaimed %s", b.Lease.Addr, a.Lease.Addr)
	}
	a, _ = s.Device(context.Background(), a.ID)
	if a.Lease != nil {
		t.Errorf("A still records lease %+v after it was reclaimed", a.Lease)
	}
	// A renews: its address is gone, and the pool is full.
	if _, err := s.RenewLease(context.Background(), a.ID, now.Add(2*time.Minute), devices.AuditEvent{}); !errors.Is(err, devices.ErrPoolExhausted) {
		t.Errorf("renew after reclaim: %v, want ErrPoolExhausted", err)
	}
	// The reclaim is recorded by B's provisioning, at its time, not later.
	evs, _ := s.History(context.Background(), "A", 100)
	if !hasAction(evs, "lease.expire") || !evs[len(evs)-1].Time.Equal(now.Add(2*time.Minute).Truncate(time.Microsecond)) {
		t.Errorf("want a lease.expire audit event of A at B's provisioning, got %+v", evs)
	}
}

func hasAction(evs []devices.AuditEvent, action string) bool {
	for _, e := range evs {
		if e.Action == action {
			return true
		}
	}
	return false
}

func TestProvisionDetectsConcurrentChange(t *testing.T) {
	s := open(t)
	s.CreateSite(context.Background(), site("p", "10.0.0.0/24"), devices.AuditEvent{})
	d := importOne(t, s, "A", "p")
	if _, err := provision(s, d, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := provision(s, d, time.Now()); !errors.Is(err, devices.ErrConflict) { // stale revision
		t.Errorf("stale provision: %v, want ErrConflict", err)
	}
}

func TestImportBatchIsIdempotentAndReportsClashes(t *testing.T) {
	s := open(t)
	rows := []devices.ImportRow{
		{Serial: "A", Model: "M", TokenHash: hash("a")},
		{Serial: "B", Model: "M", TokenHash: hash("b")},
		{Serial: "A", Model: "M", TokenHash: hash("a")},
	}
	b, res, err := s.ImportBatch(context.Background(), devices.Batch{ID: "1"}, rows, devices.AuditEvent{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{devices.RowCreated, devices.RowCreated, devices.RowRejected}
	for i, r := range res {
		if r.Status != want[i] {
			t.Errorf("row %d: %+v, want %s", i, r, want[i])
		}
	}
	if b.Count != 2 {
		t.Errorf("batch count %d, want 2", b.Count)
	}
	before, _ := s.Digest(context.Background())
	_, res, err = s.ImportBatch(context.Background(), devices.Batch{ID: "2"}, rows[:2], devices.AuditEvent{})
	if err != nil || res[0].Status != devices.RowExists || res[1].Status != devices.RowExists {
		t.Fatalf("re-import: %v %+v", err, res)
	}
	if after, _ := s.Digest(context.Background()); after != before {
		t.Error("an idempotent re-import wrote to the store")
	}
	_, res, _ = s.ImportBatch(context.Background(), devices.Batch{ID: "3"}, []devices.ImportRow{{Serial: "A", Model: "M", TokenHash: hash("other")}}, devices.AuditEvent{})
	if res[0].Status != devices.RowRejected {
		t.Errorf("same serial, other token: %+v, want rejected", res[0])
	}
	if _, _, err := s.ImportBatch(context.Background(), devices.Batch{ID: "4", Site: "nowhere"}, rows[:1], devices.AuditEvent{}); !errors.Is(err, devices.ErrNotFound) {
		t.Errorf("import into a missing site: %v, want ErrNotFound", err)
	}
}

func TestSiteInUse(t *testing.T) {
	s := open(t)
	s.CreateSite(context.Background(), site("p", "10.0.0.0/24"), devices.AuditEvent{})
	d := importOne(t, s, "A", "p")
	if err := s.DeleteSite(context.Background(), "p", devices.AuditEvent{}); !errors.Is(err, devices.ErrSiteInUse) {
		t.Errorf("delete with a device bound: %v, want ErrSiteInUse", err)
	}
	provision(s, d, time.Now())
	_, _, err := s.UpdateSite(context.Background(), "p", func(x *devices.Site) error {
		x.CIDR, x.Gateway = netip.MustParsePrefix("10.1.0.0/24"), netip.Addr{}
		return nil
	}, devices.AuditEvent{})
	if !errors.Is(err, devices.ErrSiteInUse) {
		t.Errorf("change a pool with leases: %v, want ErrSiteInUse", err)
	}
	before, _ := s.Device(context.Background(), d.ID)
	up, job, err := s.UpdateSite(context.Background(), "p", func(x *devices.Site) error { x.SSID = "new"; return nil }, devices.AuditEvent{})
	if job.Kind != devices.JobSiteConfig || job.State != devices.JobRunning || job.Total != 1 {
		t.Fatalf("the site change's job: %+v", job)
	}
	if still, _ := s.Device(context.Background(), d.ID); still.ConfigVersion != before.ConfigVersion {
		t.Error("the site change bumped devices itself: that is the job's work")
	}
	job, affected, _ := s.RunJobChunk(context.Background(), job.ID, 10, time.Now())
	after, _ := s.Device(context.Background(), d.ID)
	if job.State != devices.JobDone || len(affected) != 1 || affected[0].ID != d.ID || after.ConfigVersion != before.ConfigVersion+1 {
		t.Errorf("site change reconfigured %v; device version %d -> %d", affected, before.ConfigVersion, after.ConfigVersion)
	}
	if err != nil || up.Version != 2 {
		t.Errorf("update ssid: %v version %d, want version 2", err, up.Version)
	}
	s.CreateSite(context.Background(), site("empty", "10.2.0.0/24"), devices.AuditEvent{})
	if err := s.DeleteSite(context.Background(), "empty", devices.AuditEvent{}); err != nil {
		t.Errorf("delete an unused site: %v", err)
	}
}

func TestOpenIsExclusive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := openPath(path, boltkv.Options{LockTimeout: 100 * time.Millisecond}); !errors.Is(err, boltkv.ErrLocked) {
		t.Errorf("second open: %v, want ErrLocked", err)
	}
	if err := s.Check(context.Background()); err != nil {
		t.Error(err)
	}
}

// CRL numbers are one increasing sequence whoever reserves them, and a
// stored CRL is never replaced by one with a lower number.
func TestCRLNumbersAndStoredCRL(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[uint64]bool{}
	for range 8 {
		wg.Go(func() {
			for range 10 {
				n, err := s.NextCRLNumber(ctx, 1000)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[n] || n < 1000 {
					t.Errorf("CRL number %d reserved twice or below the floor", n)
				}
				seen[n] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n, _ := s.NextCRLNumber(ctx, 0); n != 1080 {
		t.Fatalf("after 80 numbers from 1000 the next is %d, want 1080", n)
	}
	if n, _ := s.NextCRLNumber(ctx, 5000); n != 5000 {
		t.Fatalf("a higher floor: %d, want 5000", n)
	}
	if ok, err := s.PutCRL(ctx, 7, []byte("seven")); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := s.PutCRL(ctx, 6, []byte("six")); ok || err != nil {
		t.Fatalf("an older CRL replaced a newer one: %v %v", ok, err)
	}
	if n, der, err := s.CRL(ctx); n != 7 || string(der) != "seven" || err != nil {
		t.Fatalf("stored CRL %d %q %v", n, der, err)
	}
}

// Throttle records: read, updated and deleted through fn, and swept when
// neither blocked nor recent (in chunks, checked in the transaction that
// deletes them).
func TestThrottleRecords(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	if _, ok, err := s.Throttle(ctx, "k"); ok || err != nil {
		t.Fatalf("absent key: %v %v", ok, err)
	}
	for i := range 3 {
		if err := s.UpdateThrottle(ctx, "k", func(x *devices.Throttle) bool { x.Fails++; x.Last = now; return true }); err != nil {
			t.Fatal(err)
		}
		if got, ok, _ := s.Throttle(ctx, "k"); !ok || got.Fails != i+1 {
			t.Fatalf("after %d failures: %+v", i+1, got)
		}
	}
	if err := s.UpdateThrottle(ctx, "k", func(*devices.Throttle) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Throttle(ctx, "k"); ok {
		t.Fatal("a cleared throttle is still there")
	}
	// 300 stale, 5 recent, 5 blocked.
	set := func(key string, x devices.Throttle) {
		if err := s.UpdateThrottle(ctx, key, func(t *devices.Throttle) bool { *t = x; return true }); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 300 {
		set(fmt.Sprintf("stale-%03d", i), devices.Throttle{Fails: 1, Last: now.Add(-time.Hour)})
	}
	for i := range 5 {
		set(fmt.Sprintf("recent-%d", i), devices.Throttle{Fails: 1, Last: now.Add(-time.Minute)})
		set(fmt.Sprintf("blocked-%d", i), devices.Throttle{Fails: 9, Last: now.Add(-time.Hour), Blocked: now.Add(time.Hour)})
	}
	n, err := s.SweepThrottles(ctx, now, 10*time.Minute)
	if err != nil || n != 300 {
		t.Fatalf("swept %d (%v), want the 300 stale records", n, err)
	}
	for _, k := range []string{"recent-0", "recent-4", "blocked-0", "blocked-4"} {
		if _, ok, _ := s.Throttle(ctx, k); !ok {
			t.Errorf("%s was swept", k)
		}
	}
	if _, ok, _ := s.Throttle(ctx, "stale-150"); ok {
		t.Error("stale-150 survived the sweep")
	}
}
