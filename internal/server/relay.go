package server

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/cluster"
	"github.com/provisiond/provisiond/transport/radius"
)

// relay carries the workflows' news to the front ends. The workflows are
// built first (the front ends need them to answer devices), so they are
// given the relay, and the server adds each front end to it as it builds
// it, before any listener serves.
type relay struct {
	s         *Server
	svc       *enroll.Service
	fleet     *enroll.Fleet     // the sites' NAS secrets (Disconnect-Requests)
	notifiers []enroll.Notifier // the CoAP server (Observe), the MQTT handler (retained configs)
}

var (
	_ enroll.Notifier    = (*relay)(nil)
	_ enroll.FleetEvents = (*relay)(nil)
)

// ConfigChanged hands a device's new config to every front end.
func (r *relay) ConfigChanged(id uuid.UUID, cfg enroll.DeviceConfig) {
	for _, n := range r.notifiers {
		n.ConfigChanged(id, cfg)
	}
}

// Reconfigured renders the devices' new configs and pushes them, here and
// (through the cluster) on every other replica.
func (r *relay) Reconfigured(ctx context.Context, ids []uuid.UUID) {
	r.svc.PushConfig(ctx, ids)
	r.s.announce(cluster.Event{Kind: cluster.Reconfigured, IDs: ids})
}

// Revoked cuts the devices' live sessions at once, here and (through the
// cluster) on every other replica, and marks the CRL due:
// the CRL loop reissues it at most every 200 ms while a long job runs, and
// JobDone reissues it when the job ends (not once per chunk).
func (r *relay) Revoked(_ context.Context, revoked []devices.Device) {
	s := r.s
	s.metrics.Revoked(len(revoked))
	r.crlDue()
	ids := make([]uuid.UUID, len(revoked))
	for i, d := range revoked {
		ids[i] = d.ID
	}
	r.cut(ids)
	s.announce(cluster.Event{Kind: cluster.Revoked, IDs: ids})
	r.disconnect(revoked)
}

// disconnect sends RADIUS Disconnect-Requests for the revoked devices to
// their sites' access points (Site.NAS), in the background: a revocation
// does not wait for access points. Only the replica that revoked sends.
func (r *relay) disconnect(revoked []devices.Device) {
	s := r.s
	if r.fleet == nil {
		return
	}
	sites := map[string][]devices.NAS{}
	for _, d := range revoked {
		if _, seen := sites[d.Site]; seen || d.Site == "" {
			continue
		}
		site, err := s.store.Site(context.Background(), d.Site)
		if err == nil && len(site.NAS) > 0 {
			sites[d.Site], err = r.fleet.NASSecrets(site)
		}
		if err != nil {
			s.log.Error("disconnect: site's access points", "site", d.Site, "err", err)
			sites[d.Site] = nil
		}
	}
	for _, d := range revoked {
		nas := sites[d.Site]
		if len(nas) == 0 {
			continue
		}
		s.bg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, res := range radius.Disconnect(ctx, nas, radius.SessionOf(d), 2*time.Second, 2) {
				switch {
				case res.Err != nil:
					s.log.Warn("disconnect: no answer from the access point", "serial", d.Serial, "nas", res.NAS, "err", res.Err)
				default:
					s.log.Info("disconnect: access point answered", "serial", d.Serial, "nas", res.NAS, "ack", res.ACK)
				}
			}
		})
	}
}

// cut ends the devices' sessions held here (DTLS, MQTT) and clears their
// retained configs.
func (r *relay) cut(ids []uuid.UUID) {
	s := r.s
	for _, id := range ids {
		s.coap.CutDevice(id)
		switch {
		case s.broker != nil:
			s.broker.CutDevice(id)
		case s.remote != nil:
			s.remote.CutDevice(id)
		}
	}
}

// JobDone reissues the CRL when a revocation ends, before its caller hears
// that it is done.
func (r *relay) JobDone(ctx context.Context, job devices.Job) {
	if job.Kind == devices.JobRevoke && job.Changed > 0 {
		if err := r.s.refreshCRL(ctx); err != nil {
			r.s.log.Error("regenerate CRL", "err", err)
		}
	}
}

// crlDue marks the CRL due (a renewal superseded a certificate, a
// revocation job is running); the CRL loop reissues it within 200 ms.
func (r *relay) crlDue() {
	select {
	case r.s.crlDirty <- struct{}{}:
	default: // a refresh is already due
	}
}
