package cluster_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/provisiond/provisiond/internal/cluster"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

type recorder struct {
	mu      sync.Mutex
	events  []cluster.Event
	resyncs atomic.Int32
}

func (r *recorder) apply(_ context.Context, ev cluster.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

func join(t *testing.T, cli *clientv3.Client, r *recorder) *cluster.Node {
	t.Helper()
	n, err := cluster.Join(context.Background(), cluster.Config{Client: cli, Prefix: "/test/", SessionTTL: 2 * time.Second,
		Self: cluster.Replica{ID: uuid.NewString()}, Apply: r.apply, Resync: func(context.Context) { r.resyncs.Add(1) },
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A replica cut off from etcd while the others published, whose missed
// events etcd then compacted away, resyncs its sessions when it is back
// instead of silently missing them; events after that reach it again.
func TestCutOffReplicaResyncs(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3, NoFsync: true})
	m0 := c.Members()[0]
	// X talks to member 0 only; Y to the others.
	cliX, err := clientv3.New(clientv3.Config{Endpoints: []string{m0.ClientURL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cliX.Close()
	cliY, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints()[1:], DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cliY.Close()
	var rx, ry recorder
	join(t, cliX, &rx)
	y := join(t, cliY, &ry)

	id := uuid.New()
	if err := y.Publish(context.Background(), cluster.Event{Kind: cluster.Revoked, IDs: []uuid.UUID{id}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "X to apply Y's event", func() bool { return rx.count() == 1 })
	if ry.count() != 0 {
		t.Fatal("Y applied its own event")
	}
	rx.mu.Lock()
	if ev := rx.events[0]; ev.Kind != cluster.Revoked || len(ev.IDs) != 1 || ev.IDs[0] != id || ev.Origin != y.ID() {
		t.Fatalf("X got %+v", ev)
	}
	rx.mu.Unlock()

	// X's member goes away; Y publishes; the history is compacted.
	c.Kill(m0)
	for range 3 {
		if err := y.Publish(context.Background(), cluster.Event{Kind: cluster.Reconfigured, IDs: []uuid.UUID{uuid.New()}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := cliY.Put(context.Background(), "/test/marker", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cliY.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	before := rx.resyncs.Load()
	c.Restart(m0)
	waitFor(t, "X to resync after missing compacted events", func() bool { return rx.resyncs.Load() > before })
	if n := rx.count(); n != 1 {
		t.Fatalf("X applied %d events; the missed ones were compacted, so it must resync instead", n)
	}
	// And it follows again.
	if err := y.Publish(context.Background(), cluster.Event{Kind: cluster.CRL}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "X to apply events after its resync", func() bool { return rx.count() >= 2 })
}

// One replica leads at a time; when it leaves, another takes over.
func TestOneLeaderAndHandover(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	cli := c.Client(t)
	var leading atomic.Int32
	var maxLeading atomic.Int32
	var nodes []*cluster.Node
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 3 {
		var r recorder
		n := join(t, cli, &r)
		nodes = append(nodes, n)
		wg.Go(func() {
			n.Lead(ctx, func(ctx context.Context) {
				v := leading.Add(1)
				for {
					if m := maxLeading.Load(); v <= m || maxLeading.CompareAndSwap(m, v) {
						break
					}
				}
				<-ctx.Done()
				leading.Add(-1)
			})
		})
	}
	var first *cluster.Node
	waitFor(t, "a leader", func() bool {
		for _, n := range nodes {
			if n.Leading() {
				first = n
				return true
			}
		}
		return false
	})
	_ = first.Close()
	waitFor(t, "another leader", func() bool {
		for _, n := range nodes {
			if n != first && n.Leading() {
				return true
			}
		}
		return false
	})
	cancel()
	wg.Wait()
	if m := maxLeading.Load(); m != 1 {
		t.Fatalf("%d replicas led at once", m)
	}
}
