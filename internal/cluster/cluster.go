// Package cluster is what a provisiond replica does with the others that
// share its inventory in etcd, all of it through etcd's own mechanisms:
//
//   - membership: each replica keeps a key under PREFIX "replicas/" attached
//     to its etcd session's lease, so a replica that dies drops out when
//     the lease ends (concurrency.Session);
//   - election: one replica at a time runs the cluster-wide periodic work
//     (concurrency.Election under PREFIX "leader/"); when it dies, its
//     session ends and another wins;
//   - change notification: a replica that revoked or reconfigured devices
//     publishes an event under PREFIX "events/" (on a short lease, so they
//     do not pile up) and every other replica, watching that prefix,
//     applies it to the device sessions it holds. A replica whose watch
//     fell behind etcd's compacted history, or that was cut off, resyncs its
//     sessions from the inventory instead of missing events.
//
// # Caveats
//
// Events are published after the change committed. A replica that crashes
// between its commit and its publish leaves the others' sessions stale until
// their periodic resync (Config.ResyncEvery); a new connection is always
// checked against the inventory itself.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Event kinds.
const (
	// Revoked: the devices were revoked; cut their sessions.
	Revoked = "revoked"
	// Reconfigured: the devices have a new config; push it.
	Reconfigured = "reconfigured"
	// CRL: a replica stored a new CRL; load it.
	CRL = "crl"
	// Firmware: a replica added a firmware image (Ref "model/version");
	// take its manifest from the store and the image from a replica.
	Firmware = "firmware"
)

// Event is one change announced to the other replicas.
type Event struct {
	Kind   string      `json:"kind"`
	IDs    []uuid.UUID `json:"ids,omitempty"`
	Ref    string      `json:"ref,omitempty"`
	Origin string      `json:"origin"`
	Time   time.Time   `json:"time"`
}

// Replica is what a replica says about itself in the membership list.
type Replica struct {
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	API     string    `json:"api"` // its HTTPS API
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Layout is the inventory layout the replica reads and writes
	// (devices.Layout). Replicas from before layouts were announced have
	// none (0).
	Layout int `json:"layout,omitempty"`
}

// Config builds a Node.
type Config struct {
	Client *clientv3.Client
	// Prefix is the inventory's key prefix; the cluster's keys go beside
	// its buckets.
	Prefix string
	Self   Replica
	// SessionTTL is how long a dead replica keeps its membership and
	// leadership. Default 10s.
	SessionTTL time.Duration
	// ResyncEvery is the safety-net resync of the replica's sessions.
	// Default 5m.
	ResyncEvery time.Duration
	// Apply takes another replica's event.
	Apply func(ctx context.Context, ev Event)
	// Resync brings every session this replica holds up to the inventory
	// (after missed events).
	Resync func(ctx context.Context)
	Log    *slog.Logger
}

// Node is this replica's membership in the cluster.
type Node struct {
	cfg    Config
	cli    *clientv3.Client
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	sess     *concurrency.Session
	leading  atomic.Bool
	lease    clientv3.LeaseID
	leaseAt  time.Time
	seq      atomic.Uint64
	resyncs  atomic.Int64
	received atomic.Int64
}

// Join registers this replica and starts watching for the others' events.
func Join(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 10 * time.Second
	}
	if cfg.ResyncEvery == 0 {
		cfg.ResyncEvery = 5 * time.Minute
	}
	if cfg.Self.ID == "" {
		cfg.Self.ID = uuid.NewString()
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	n := &Node{cfg: cfg, cli: cfg.Client, ctx: lctx, cancel: cancel}
	if _, err := n.session(ctx); err != nil {
		cancel()
		return nil, err
	}
	// Events from the revision the replica joined at on.
	resp, err := n.cli.Get(ctx, cfg.Prefix+"events/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		cancel()
		_ = n.Close()
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n.wg.Go(func() { n.watch(resp.Header.Revision + 1) })
	n.wg.Go(n.keepMembership)
	return n, nil
}

// ID is this replica's ID.
func (n *Node) ID() string { return n.cfg.Self.ID }

// Leading reports whether this replica runs the cluster-wide work now.
func (n *Node) Leading() bool { return n.leading.Load() }

// session returns the live etcd session, making a new one (and
// registering the replica on it) when the last one ended.
func (n *Node) session(ctx context.Context) (*concurrency.Session, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sess != nil {
		select {
		case <-n.sess.Done():
		default:
			return n.sess, nil
		}
	}
	s, err := concurrency.NewSession(n.cli, concurrency.WithTTL(int(n.cfg.SessionTTL/time.Second)), concurrency.WithContext(n.ctx))
	if err != nil {
		return nil, fmt.Errorf("cluster session: %w", err)
	}
	info, _ := json.Marshal(n.cfg.Self)
	if _, err := n.cli.Put(ctx, n.cfg.Prefix+"replicas/"+n.cfg.Self.ID, string(info), clientv3.WithLease(s.Lease())); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("cluster: register replica: %w", err)
	}
	n.sess = s
	return s, nil
}

// keepMembership makes a new session when etcd ended the last one (the
// replica was cut off longer than the TTL).
func (n *Node) keepMembership() {
	for {
		n.mu.Lock()
		s := n.sess
		n.mu.Unlock()
		select {
		case <-n.ctx.Done():
			return
		case <-s.Done():
		}
		for n.ctx.Err() == nil {
			if _, err := n.session(n.ctx); err == nil {
				n.cfg.Log.Info("cluster: rejoined after the session ended")
				break
			} else {
				n.cfg.Log.Warn("cluster: rejoin", "err", err)
			}
			select {
			case <-n.ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// Lead runs work whenever this replica is the elected leader, until ctx
// ends: work's context ends when leadership is lost.
func (n *Node) Lead(ctx context.Context, work func(ctx context.Context)) {
	for ctx.Err() == nil && n.ctx.Err() == nil {
		s, err := n.session(ctx)
		if err != nil {
			n.cfg.Log.Warn("cluster: election", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		e := concurrency.NewElection(s, n.cfg.Prefix+"leader/")
		if err := e.Campaign(ctx, n.cfg.Self.ID); err != nil {
			if ctx.Err() == nil {
				n.cfg.Log.Warn("cluster: campaign", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		n.cfg.Log.Info("cluster: this replica leads", "replica", n.cfg.Self.ID)
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-s.Done(): // the session (and with it leadership) ended
			case <-wctx.Done():
			}
			cancel()
		}()
		n.leading.Store(true)
		work(wctx)
		n.leading.Store(false)
		cancel()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = e.Resign(rctx)
		rcancel()
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// eventLease is the short lease events are attached to (a new one every
// 20 s, each living 60 s): watchers see an event when it is put, so it
// needs to last only long enough for a lagging watcher to catch up.
func (n *Node) eventLease(ctx context.Context) (clientv3.LeaseID, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lease != 0 && time.Since(n.leaseAt) < 20*time.Second {
		return n.lease, nil
	}
	at := time.Now()
	resp, err := n.cli.Grant(ctx, 60)
	if err != nil {
		return 0, err
	}
	n.lease, n.leaseAt = resp.ID, at
	return resp.ID, nil
}

// Publish announces ev to the other replicas, retrying for up to 10 s.
func (n *Node) Publish(ctx context.Context, ev Event) error {
	ev.Origin, ev.Time = n.cfg.Self.ID, time.Now().UTC()
	body, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	key := n.cfg.Prefix + "events/" + strconv.FormatInt(time.Now().UnixNano(), 10) + "-" + n.cfg.Self.ID + "-" +
		strconv.FormatUint(n.seq.Add(1), 10)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for {
		lease, err := n.eventLease(ctx)
		if err == nil {
			// The key is this event's own: sending it twice after a lost
			// answer writes the same event once more, which applying
			// twice tolerates (cuts and pushes are idempotent).
			_, err = n.cli.Put(ctx, key, string(body), clientv3.WithLease(lease))
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("cluster: publish %s: %w", ev.Kind, err)
		}
		n.mu.Lock()
		n.lease = 0 // perhaps expired: take a new one
		n.mu.Unlock()
		sleep(ctx, 200*time.Millisecond)
	}
}

// watch applies the others' events from revision rev on; when etcd has
// compacted what it missed, or the watch broke, it resyncs and goes on
// from the present.
func (n *Node) watch(rev int64) {
	tick := time.NewTicker(n.cfg.ResyncEvery)
	defer tick.Stop()
	for n.ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(n.ctx))
		ch := n.cli.Watch(wctx, n.cfg.Prefix+"events/", clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithFilterDelete())
		broken := false
		for !broken {
			select {
			case <-n.ctx.Done():
				cancel()
				return
			case <-tick.C:
				n.resync("periodic")
			case resp, ok := <-ch:
				switch {
				case !ok:
					broken = true
				case resp.CompactRevision != 0:
					n.cfg.Log.Warn("cluster: missed events were compacted away; resyncing", "from", rev, "compacted", resp.CompactRevision)
					rev = resp.CompactRevision
					n.resync("compacted")
					broken = true
				case resp.Err() != nil:
					n.cfg.Log.Warn("cluster: watch", "err", resp.Err())
					broken = true
				default:
					for _, e := range resp.Events {
						var ev Event
						if err := json.Unmarshal(e.Kv.Value, &ev); err != nil {
							n.cfg.Log.Warn("cluster: undecodable event", "key", string(e.Kv.Key), "err", err)
							continue
						}
						if ev.Origin == n.cfg.Self.ID {
							continue
						}
						n.received.Add(1)
						n.cfg.Apply(n.ctx, ev)
					}
					if resp.Header.Revision > 0 {
						rev = resp.Header.Revision + 1
					}
				}
			}
		}
		cancel()
		if broken && n.ctx.Err() == nil {
			// A watch that ended without compaction (leader lost, etcd
			// unreachable) may have missed nothing, or not: resync.
			n.resync("watch ended")
			sleep(n.ctx, 200*time.Millisecond)
		}
	}
}

func (n *Node) resync(why string) {
	n.resyncs.Add(1)
	n.cfg.Log.Info("cluster: resync sessions", "why", why)
	n.cfg.Resync(n.ctx)
}

// Stats counts events applied and resyncs done.
func (n *Node) Stats() (received, resyncs int64) { return n.received.Load(), n.resyncs.Load() }

// Close leaves the cluster: the membership key and any leadership go now,
// not when the session would have expired.
func (n *Node) Close() error {
	n.cancel()
	n.wg.Wait()
	n.mu.Lock()
	s := n.sess
	n.mu.Unlock()
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _ = n.cli.Revoke(ctx, s.Lease())
	s.Orphan()
	return nil
}
