package devices_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

// indexFleet loads n devices with attributes drawn from small sets, so that
// filters on one or several of them match many, few or no devices.
// Batch IDs that are UUIDs are indexed by their bytes (fieldBatchUUID).
const (
	batchU3 = "0e2c0b3e-4f1a-4c55-9d1e-6a7b8c9d0e13"
	batchU4 = "0e2c0b3e-4f1a-4c55-9d1e-6a7b8c9d0e14"
)

func indexFleet(t *testing.T, s *devices.Store, n int, rng *rand.Rand) {
	t.Helper()
	for _, name := range []string{"north", "south", "east"} {
		if _, err := s.CreateSite(context.Background(), site(name, "10.0.0.0/16"), devices.AuditEvent{Action: "site.create"}); err != nil {
			t.Fatal(err)
		}
	}
	pick := func(vals ...string) string { return vals[rng.IntN(len(vals))] }
	now := time.Now()
	ds := make([]devices.Device, n)
	for i := range ds {
		d := devices.Device{ID: uuid.New(), Serial: fmt.Sprintf("IDX-%05d", i), TokenHash: hash("t"),
			Model: pick("A", "B", "C"), BatchID: pick("b1", "b2", batchU3, batchU4), CreatedAt: now, UpdatedAt: now}
		d.Site = pick("", "north", "south", "east")
		d.State = devices.StateManufactured
		if d.Site != "" {
			d.State = devices.State(pick(string(devices.StateClaimed), string(devices.StateProvisioned), string(devices.StateActive), string(devices.StateRevoked)))
		}
		if d.State == devices.StateActive || d.State == devices.StateProvisioned {
			d.FirmwareVersion = pick("1.0", "1.1", "2.0")
			if rng.IntN(2) == 0 {
				d.LastSeen = now.Add(-time.Duration(rng.IntN(48)) * time.Hour)
			}
		}
		ds[i] = d
	}
	// In loads of 8: one transaction each, within etcd's bound.
	for c := 0; c < len(ds); c += 8 {
		if err := s.Load(context.Background(), ds[c:min(c+8, len(ds))], now, devices.AuditEvent{Action: "inventory.load"}); err != nil {
			t.Fatal(err)
		}
	}
}

// every device in ID order: the reference the indexed listing must equal.
func allDevices(t *testing.T, s *devices.Store) []devices.Device {
	t.Helper()
	var all []devices.Device
	var after uuid.UUID
	for {
		page, next, err := s.Devices(context.Background(), devices.Filter{After: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page...)
		if next == uuid.Nil {
			return all
		}
		after = next
	}
}

func randomFilter(rng *rand.Rand, now time.Time) devices.Filter {
	var f devices.Filter
	maybe := func(vals ...string) string {
		if rng.IntN(3) == 0 {
			return vals[rng.IntN(len(vals))]
		}
		return ""
	}
	f.Site = maybe("north", "south", "east", "west")
	f.State = devices.State(maybe("manufactured", "claimed", "provisioned", "active", "revoked"))
	f.Model = maybe("A", "B", "C", "Z")
	f.Firmware = maybe("1.0", "1.1", "2.0")
	f.Batch = maybe("b1", "b2", batchU3, batchU4, "b9", strings.ToUpper(batchU3))
	if rng.IntN(6) == 0 {
		f.SeenAfter = now.Add(-24 * time.Hour)
	}
	if rng.IntN(6) == 0 {
		f.NotSeenSince = now.Add(-12 * time.Hour)
	}
	f.Limit = 1 + rng.IntN(40)
	return f
}

// checkListings pages through random filters and compares each listing with
// the reference: every matching device, in ID order, each exactly once.
func checkListings(t *testing.T, s *devices.Store, rng *rand.Rand, rounds int) {
	t.Helper()
	all := allDevices(t, s)
	now := time.Now()
	for r := range rounds {
		f := randomFilter(rng, now)
		var want, got []uuid.UUID
		for i := range all {
			if f.Match(&all[i]) {
				want = append(want, all[i].ID)
			}
		}
		for page := 0; ; page++ {
			list, next, err := s.Devices(context.Background(), f)
			if err != nil {
				t.Fatalf("round %d filter %+v: %v", r, f, err)
			}
			for _, d := range list {
				got = append(got, d.ID)
			}
			if next == uuid.Nil {
				break
			}
			if len(list) != f.Limit {
				t.Fatalf("round %d: short page (%d of %d) with a next cursor", r, len(list), f.Limit)
			}
			f.After = next
		}
		if !slices.Equal(got, want) {
			t.Fatalf("round %d filter %+v: listed %d devices, want %d", r, f, len(got), len(want))
		}
	}
	// Convergence and leases per site, from the index and the lease
	// records, against the device records themselves.
	bySite, err := s.LeasesInUseBySite(context.Background(), now)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"north", "south", "east"} {
		var enrolled, applied, leased int
		for _, d := range all {
			if d.Site == name && (d.State == devices.StateProvisioned || d.State == devices.StateActive) {
				enrolled++
				if d.AppliedConfigVersion == d.ConfigVersion {
					applied++
				}
			}
			if d.Lease != nil && d.Lease.Site == name && d.Lease.Expires.After(now) {
				leased++
			}
		}
		e, a, err := s.Convergence(context.Background(), name)
		if err != nil || e != enrolled || a != applied {
			t.Fatalf("convergence %s = %d/%d (%v), want %d/%d", name, e, a, err, enrolled, applied)
		}
		n, err := s.LeasesInUse(context.Background(), name, now)
		if err != nil || n != leased || bySite[name] != leased {
			t.Fatalf("leases in use %s = %d, by site %d (%v), want %d", name, n, bySite[name], err, leased)
		}
	}
}

func TestIndexedListingEqualsFullScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := open(t)
	n, rounds := 1500, 300
	if etcdtest.Shared() != nil {
		// Over etcd each listed device is a request: a smaller fleet
		// keeps the suite's time in bounds and still spans many pages.
		n, rounds = 600, 100
	}
	indexFleet(t, s, n, rng)
	checkListings(t, s, rng, rounds)

	// Changes move index entries: state, firmware and site changes, a
	// revocation, and a re-open under a new identity (the record is re-keyed).
	all := allDevices(t, s)
	for i := 0; i < len(all); i += 7 {
		d := all[i]
		_, err := s.UpdateDevice(context.Background(), d.ID, func(x *devices.Device) (*devices.AuditEvent, error) {
			x.FirmwareVersion = "3.0"
			if x.State == devices.StateProvisioned {
				x.State = devices.StateActive
			}
			x.ConfigVersion += uint64(i % 2) // half of them now have a config to apply
			return nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var revoked []uuid.UUID
	for _, d := range all[:60] {
		if d.State == devices.StateProvisioned || d.State == devices.StateActive {
			revoked = append(revoked, d.ID)
		}
	}
	runJob(t, s, devices.Job{Kind: devices.JobRevoke, Selector: devices.Selector{IDs: revoked}, Reason: "test"}, 7)
	for _, id := range revoked[:len(revoked)/2] {
		if _, err := s.Reopen(context.Background(), id, hash("new"), uuid.New(), time.Now(), devices.AuditEvent{}); err != nil {
			t.Fatal(err)
		}
	}
	checkListings(t, s, rng, rounds)
	if problems, err := s.Verify(context.Background()); err != nil || len(problems) > 0 {
		t.Fatalf("verify: %v %v", err, problems)
	}
}

// Verify finds each kind of damage a crash or a bug could leave.
func TestVerifyFindsDamage(t *testing.T) {
	for name, damage := range map[string]func(tx *bolt.Tx) error{
		"lease without a device": func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("leases")).Put(append([]byte("north\x00"), 10, 0, 9, 9),
				[]byte(`{"site":"north","addr":"10.0.9.9","device_id":"`+uuid.NewString()+`","expires":"2099-01-01T00:00:00Z"}`))
		},
		"device's lease missing": func(tx *bolt.Tx) error {
			c := tx.Bucket([]byte("leases")).Cursor()
			k, _ := c.First()
			return tx.Bucket([]byte("leases")).Delete(k)
		},
		"certificate without a device": func(tx *bolt.Tx) error {
			id := uuid.New()
			return tx.Bucket([]byte("certs")).Put([]byte("abcdef"), id[:])
		},
		"index entry of a missing device": func(tx *bolt.Tx) error {
			id := uuid.New()
			return tx.Bucket([]byte("index")).Put(append([]byte{'m', 0, 1, 'A'}, id[:]...), nil)
		},
		"device missing from its serial": func(tx *bolt.Tx) error {
			c := tx.Bucket([]byte("serials")).Cursor()
			k, _ := c.First()
			return tx.Bucket([]byte("serials")).Delete(k)
		},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "inv.db")
			s, err := openPath(path, boltkv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			indexFleet(t, s, 200, rand.New(rand.NewPCG(5, 6)))
			if problems, err := s.Verify(context.Background()); err != nil || len(problems) > 0 {
				t.Fatalf("before: %v %v", err, problems)
			}
			s.Close()
			db, err := bolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(damage)
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
			s, err = openPath(path, boltkv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if problems, err := s.Verify(context.Background()); err != nil || len(problems) == 0 {
				t.Fatalf("after damage: %v, found nothing", err)
			} else {
				t.Log(problems)
			}
		})
	}
}

// A store written before the index existed gets it built when opened.
func TestIndexBuiltForOlderStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	indexFleet(t, s, 400, rng)
	s.Close()

	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte("index")); err != nil {
			return err
		}
		return tx.Bucket([]byte("meta")).Delete([]byte("index_version"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	defer devices.SetIndexChunk(7)() // many chunks, the last one short
	s, err = openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	list, _, err := s.Devices(context.Background(), devices.Filter{Model: "A", Limit: 1000})
	if err != nil || len(list) == 0 {
		t.Fatalf("model A after reopening: %d devices, %v", len(list), err)
	}
	checkListings(t, s, rng, 200)
}

// A store indexed by version 3, which kept states and UUID batch IDs as
// text, is re-indexed in the short form when opened: its text keys are
// gone, and listings by state and batch find what they did.
func TestIndexVersion3Upgraded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "inv.db")
	s, err := openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	indexFleet(t, s, 300, rng)
	want := map[string]int{}
	for _, f := range []devices.Filter{{State: devices.StateActive}, {State: devices.StateClaimed}, {Batch: batchU3}, {Batch: "b1"}, {Batch: batchU4, State: devices.StateRevoked}} {
		f.Limit = 1000
		list, _, err := s.Devices(context.Background(), f)
		if err != nil || len(list) == 0 {
			t.Fatalf("%+v: %d devices, %v", f, len(list), err)
		}
		want[fmt.Sprint(f)] = len(list)
	}
	s.Close()

	// Rewrite the index as version 3 wrote it.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	textKey := func(field byte, value string, id []byte) []byte {
		k := append([]byte{field}, byte(len(value)>>8), byte(len(value)))
		return append(append(k, value...), id...)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		idx := tx.Bucket([]byte("index"))
		var short [][]byte
		idx.ForEach(func(k, _ []byte) error {
			if k[0] == 's' || k[0] == 'u' {
				short = append(short, bytes.Clone(k))
			}
			return nil
		})
		if len(short) == 0 {
			t.Fatal("no short index keys")
		}
		for _, k := range short {
			id := k[len(k)-16:]
			v := k[3 : len(k)-16]
			var err error
			if k[0] == 's' {
				states := map[byte]string{1: "manufactured", 2: "claimed", 3: "provisioned", 4: "active", 5: "revoked"}
				err = idx.Put(textKey('t', states[v[0]], id), nil)
			} else {
				err = idx.Put(textKey('b', uuid.UUID(v).String(), id), nil)
			}
			if err != nil {
				return err
			}
			if err := idx.Delete(k); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte("meta")).Put([]byte("index_version"), []byte("3"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	defer devices.SetIndexChunk(11)()
	s, err = openPath(path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, f := range []devices.Filter{{State: devices.StateActive}, {State: devices.StateClaimed}, {Batch: batchU3}, {Batch: "b1"}, {Batch: batchU4, State: devices.StateRevoked}} {
		f.Limit = 1000
		list, _, err := s.Devices(context.Background(), f)
		if err != nil || len(list) != want[fmt.Sprint(f)] {
			t.Errorf("%+v after the upgrade: %d devices (%v), want %d", f, len(list), err, want[fmt.Sprint(f)])
		}
	}
	if problems, err := s.Verify(context.Background()); err != nil || len(problems) != 0 {
		t.Fatalf("after the upgrade: %v %v", problems, err)
	}
	checkListings(t, s, rng, 100)
}

func TestLoadRefusesWithoutChange(t *testing.T) {
	s := open(t)
	if _, err := s.CreateSite(context.Background(), site("hq", "10.1.0.0/30"), devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	dev := func(serial string, st devices.State) devices.Device {
		return devices.Device{ID: uuid.New(), Serial: serial, Site: "hq", State: st, Model: "M", TokenHash: hash(serial)}
	}
	if err := s.Load(context.Background(), []devices.Device{dev("L1", devices.StateActive)}, now, devices.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	before, _ := s.Digest(context.Background())
	for name, ds := range map[string][]devices.Device{
		"existing serial": {dev("L2", devices.StateClaimed), dev("L1", devices.StateClaimed)},
		"unknown site":    {{ID: uuid.New(), Serial: "L3", Site: "nowhere", State: devices.StateClaimed}},
		"pool exhausted":  {dev("L4", devices.StateActive), dev("L5", devices.StateActive)}, // a /30 has one free address left
		"no id":           {{Serial: "L6"}},
	} {
		if err := s.Load(context.Background(), ds, now, devices.AuditEvent{}); err == nil {
			t.Errorf("%s: loaded", name)
		}
		if after, _ := s.Digest(context.Background()); after != before {
			t.Errorf("%s: the store changed", name)
		}
	}
}
