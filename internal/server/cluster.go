package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/cluster"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// Cluster-wide work and its pace.
const (
	// jobSweepEvery is how often the leader looks for jobs whose replica
	// died; jobStaleAfter is how long a job must have made no progress.
	jobSweepEvery = time.Minute
	jobStaleAfter = 5 * time.Minute
)

// clustered reports whether the inventory is shared with other replicas.
func (s *Server) clustered() bool { return s.etcd != nil }

// leading reports whether this server does the cluster-wide periodic work:
// always on its own, when elected in a cluster.
func (s *Server) leading() bool { return s.node == nil || s.node.Leading() }

// checkLayouts refuses to open a cluster's inventory while a replica of
// another inventory layout runs on it: an older replica could not read the
// records this one writes, nor keep the index as this one does, and this
// one could not read a newer one's. A release that changes the layout is
// upgraded with every replica of the older one stopped first
// (docs/cluster.md, Upgrades).
func checkLayouts(ctx context.Context, db *etcdkv.DB) error {
	rs, err := cluster.ListReplicas(ctx, db.Client(), db.Prefix())
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	for _, r := range rs {
		switch {
		case r.Layout < devices.Layout:
			return fmt.Errorf("%w: replica %s on %s (version %s) runs with inventory layout %d, this version writes layout %d, which it cannot read; "+
				"stop every replica of the older version, then start this one (docs/cluster.md, Upgrades)", ErrLayout, r.ID, r.Host, r.Version, r.Layout, devices.Layout)
		case r.Layout > devices.Layout:
			return fmt.Errorf("%w: replica %s on %s (version %s) writes inventory layout %d, which this version (layout %d) cannot read; "+
				"run that version here too", ErrLayout, r.ID, r.Host, r.Version, r.Layout, devices.Layout)
		}
	}
	return nil
}

// ErrLayout: a replica of another inventory layout runs on the cluster's
// inventory (checkLayouts).
var ErrLayout = errors.New("a replica of another inventory layout runs on this inventory")

// joinCluster registers this replica, starts applying the others' events
// and campaigns for the cluster-wide work.
func (s *Server) joinCluster(ctx context.Context, svc *enroll.Service, fleet *enroll.Fleet) error {
	host, _ := os.Hostname()
	node, err := cluster.Join(ctx, cluster.Config{
		Client: s.etcd.Client(),
		Prefix: s.etcd.Prefix(),
		Self: cluster.Replica{ID: uuid.NewString(), Host: host, Version: Version, Started: time.Now().UTC(), Layout: devices.Layout,
			API: "https://" + net.JoinHostPort(s.cfg.AdvertiseHost, port(s.httpLn.Addr()))},
		Apply:  func(ctx context.Context, ev cluster.Event) { s.applyEvent(ctx, svc, ev) },
		Resync: func(ctx context.Context) { s.resyncSessions(ctx, svc) },
		Log:    s.log.With("component", "cluster"),
	})
	if err != nil {
		return err
	}
	s.node = node
	leadCtx, cancel := context.WithCancel(context.Background())
	s.bg.Go(func() {
		<-s.stop
		cancel()
	})
	s.bg.Go(func() { node.Lead(leadCtx, func(ctx context.Context) { s.leaderWork(ctx, fleet) }) })
	return nil
}

// leaderWork is what one replica of a cluster does while elected: reissue
// the CRL (at once, then on crlLoop's schedule), take over the jobs of
// replicas that died, prune the audit log past its retention and drop
// throttle records that expired.
func (s *Server) leaderWork(ctx context.Context, fleet *enroll.Fleet) {
	if err := s.refreshCRL(ctx); err != nil && ctx.Err() == nil {
		s.log.Error("regenerate CRL", "err", err)
	}
	t := time.NewTicker(jobSweepEvery)
	defer t.Stop()
	for {
		if err := fleet.ResumeJobs(ctx, jobStaleAfter); err != nil && ctx.Err() == nil {
			s.log.Error("resume jobs", "err", err)
		}
		s.pruneAudit(ctx)
		// Throttle records nobody needs any more (the longest window is
		// the claims' 10 minutes).
		window := max(s.cfg.Enroll.FailureWindow, 10*time.Minute)
		if n, err := s.store.SweepThrottles(ctx, time.Now(), window); err != nil && ctx.Err() == nil {
			s.log.Error("sweep throttles", "err", err)
		} else if n > 0 {
			s.log.Info("swept throttle records", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// announce tells the other replicas of a change (no-op alone). It does
// not hold up the caller: the change is committed and applied here already.
func (s *Server) announce(ev cluster.Event) {
	if s.node == nil {
		return
	}
	s.bg.Go(func() {
		if err := s.node.Publish(context.Background(), ev); err != nil {
			s.log.Error("announce to the cluster", "kind", ev.Kind, "devices", len(ev.IDs), "ref", ev.Ref, "err", err)
		}
	})
}

// applyEvent applies another replica's change to the sessions held here.
func (s *Server) applyEvent(ctx context.Context, svc *enroll.Service, ev cluster.Event) {
	switch ev.Kind {
	case cluster.Revoked:
		s.relay.cut(ev.IDs)
	case cluster.Reconfigured:
		svc.PushConfig(ctx, ev.IDs)
	case cluster.Firmware:
		s.cat.onFirmware(ctx, ev.Ref)
	case cluster.CRL:
		if err := s.loadCRL(ctx); err != nil {
			s.log.Error("load the cluster's CRL", "err", err)
		}
	default:
		s.log.Warn("cluster event of an unknown kind", "kind", ev.Kind, "from", ev.Origin)
	}
}

// resyncSessions brings every session held here up to the inventory after
// events may have been missed: revoked devices are cut, the others get
// their current config, and the CRL is reloaded.
func (s *Server) resyncSessions(ctx context.Context, svc *enroll.Service) {
	if err := s.loadCRL(ctx); err != nil {
		s.log.Error("load the cluster's CRL", "err", err)
	}
	if err := s.cat.importShared(ctx); err != nil {
		s.log.Error("import the cluster's firmware manifests", "err", err)
	}
	ids := s.coap.DeviceIDs()
	if s.broker != nil {
		ids = append(ids, s.broker.DeviceIDs()...)
	}
	var cut, push []uuid.UUID
	for _, id := range ids {
		_, err := svc.Config(ctx, id)
		switch {
		case errors.Is(err, enroll.ErrRevoked), errors.Is(err, enroll.ErrUnknownDevice):
			cut = append(cut, id)
		case err == nil:
			push = append(push, id)
		}
	}
	s.relay.cut(cut)
	svc.PushConfig(ctx, push)
}

// loadCRL takes the cluster's current CRL from the store.
func (s *Server) loadCRL(ctx context.Context) error {
	_, der, err := s.store.CRL(ctx)
	if err != nil || der == nil {
		return err
	}
	s.crl.Store(&der)
	return nil
}

// clusterStatus is GET /api/v1/cluster.
func (s *Server) clusterStatus(ctx context.Context) (httpapi.ClusterStatus, error) {
	st, err := s.node.Status(ctx)
	if err != nil {
		return httpapi.ClusterStatus{}, err
	}
	out := httpapi.ClusterStatus{Self: st.Self, Leader: st.Leader, Keys: st.Keys}
	for _, r := range st.Replicas {
		out.Replicas = append(out.Replicas, httpapi.ClusterReplica(r))
	}
	for _, m := range st.Etcd {
		out.Etcd = append(out.Etcd, httpapi.EtcdMember{Name: m.Name, Endpoint: m.Endpoint, Healthy: m.Healthy, Leader: m.Leader,
			Version: m.Version, DBSize: m.DBSize, DBSizeInUse: m.DBSizeInUse, Error: m.Error})
	}
	return out, nil
}

// StoreStats returns the etcd engine's counters (requests, commits,
// re-runs); false when the inventory is a bbolt file.
func (s *Server) StoreStats() (etcdkv.Stats, bool) {
	if s.etcd == nil {
		return etcdkv.Stats{}, false
	}
	return s.etcd.Stats(), true
}
