package devices

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
)

// recordingDB records the keys each write transaction read and wrote: what
// an optimistic engine compares at commit.
type recordingDB struct {
	kv.DB
	last footprint
}

type footprint struct{ read, written map[string]bool }

func (r *recordingDB) Update(ctx context.Context, fn func(kv.Tx) error) error {
	return r.DB.Update(ctx, func(tx kv.Tx) error {
		r.last = footprint{read: map[string]bool{}, written: map[string]bool{}}
		return fn(&recordingTx{Tx: tx, fp: r.last})
	})
}

func (r *recordingDB) Batch(ctx context.Context, fn func(kv.Tx) error) error {
	return r.Update(ctx, fn)
}

type recordingTx struct {
	kv.Tx
	fp footprint
}

func key(b, k []byte) string { return string(b) + "/" + string(k) }

func (t *recordingTx) Get(b, k []byte) ([]byte, error) {
	t.fp.read[key(b, k)] = true
	return t.Tx.Get(b, k)
}

func (t *recordingTx) Put(b, k, v []byte) error {
	t.fp.written[key(b, k)] = true
	return t.Tx.Put(b, k, v)
}

func (t *recordingTx) Delete(b, k []byte) error {
	t.fp.written[key(b, k)] = true
	return t.Tx.Delete(b, k)
}

func (t *recordingTx) NextSequence(b []byte) (uint64, error) {
	t.fp.written[key(b, []byte("#sequence"))] = true
	return t.Tx.NextSequence(b)
}

// TestEnrollmentsIntoOneSiteDoNotConflict provisions many devices into one
// small site and compares what each enrollment's transaction read and
// wrote: two enrollments conflict on an optimistic engine when one wrote a
// key the other read or wrote. With a cursor per site and one audit head
// (the layout before), every pair conflicted; now only pairs whose audit
// events share a chain or whose address searches overlap do.
func TestEnrollmentsIntoOneSiteDoNotConflict(t *testing.T) {
	ctx := context.Background()
	db, err := boltkv.Open(filepath.Join(t.TempDir(), "inv.db"), boltkv.Options{Buckets: Buckets})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingDB{DB: db}
	s, err := New(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	site := Site{Name: "small", SSID: "s", Security: SecurityWPA2PSK, Passphrase: "12345678", CIDR: netip.MustParsePrefix("10.1.0.0/24")}
	if _, err := s.CreateSite(ctx, site, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	const n = 100
	rng := rand.New(rand.NewPCG(1, 2))
	var rows []ImportRow
	for i := range n {
		rows = append(rows, ImportRow{Serial: fmt.Sprintf("SN-%04d-%d", i, rng.Uint32()), Model: "M", TokenHash: make([]byte, 32)})
	}
	if _, _, err := s.ImportBatch(ctx, Batch{ID: "b", Site: "small"}, rows, AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var fps []footprint
	for _, r := range rows {
		d, err := s.DeviceBySerial(ctx, r.Serial)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Provision(ctx, Provisioning{DeviceID: d.ID, Rev: d.Rev, Now: now,
			Apply: func(x *Device) { x.State = StateProvisioned }, Audit: AuditEvent{Action: "device.enroll", Target: d.Serial}}); err != nil {
			t.Fatal(err)
		}
		fps = append(fps, rec.last)
	}
	conflicts, users := 0, map[string]int{}
	for i := range fps {
		for k := range fps[i].written {
			users[k]++
		}
		for j := range i {
			if clash(fps[i], fps[j]) || clash(fps[j], fps[i]) {
				conflicts++
			}
		}
	}
	pairs := n * (n - 1) / 2
	t.Logf("%d of %d pairs of enrollments into one /24 would conflict (%.1f%%)", conflicts, pairs, 100*float64(conflicts)/float64(pairs))
	if conflicts*50 > pairs {
		t.Errorf("%d of %d pairs conflict: more than 2%%", conflicts, pairs)
	}
	for k, u := range users {
		if u > 3 {
			t.Errorf("key %q is written by %d of %d enrollments: a hot key", k, u, n)
		}
	}
}

// clash reports whether a wrote a key that b read or wrote.
func clash(a, b footprint) bool {
	for k := range a.written {
		if b.read[k] || b.written[k] {
			return true
		}
	}
	return false
}
