package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provisiond/provisiond/transport/wire"
)

// SoakOptions tune a fleet that stays online.
type SoakOptions struct {
	Broker      string        // overrides every bundle's MQTT endpoint
	Concurrency int           // connections opened at once; default 64
	LeaseEvery  time.Duration // each device renews its lease this often (first at a random point); 0: never
	CertEvery   time.Duration // each device renews its certificate this often, then reconnects with it; 0: never
	Progress    io.Writer     // connection progress, one line per second
	// FirmwareOverCoAP downloads firmware targets over CoAP block-wise
	// instead of HTTPS.
	FirmwareOverCoAP bool
}

// Fleet is enrolled devices online over MQTT with mutual TLS, as they are
// between enrollments: each one applies every config pushed to it and
// acknowledges it with a state report, renews its lease and certificate on
// schedule, and notices when the server cuts it off.
type Fleet struct {
	o     SoakOptions
	devs  []*soakDevice
	byID  map[string]*soakDevice
	stop  context.CancelFunc
	wg    sync.WaitGroup
	stats struct {
		acks, ackErrors, leases, leaseErrors, certs, certErrors atomic.Int64
		fwUpdates, fwRefused                                    atomic.Int64
	}
}

type soakDevice struct {
	d *Device

	mu       sync.Mutex
	s        *Session
	versions map[uint64]time.Time // config versions received, and when
	cut      time.Time            // when the server closed the session
	cutWhy   string               // and what the device saw
	changed  chan struct{}        // closed and replaced on every change above
}

// note records a change and wakes whoever waits for one.
func (sd *soakDevice) note(fn func()) {
	sd.mu.Lock()
	fn()
	close(sd.changed)
	sd.changed = make(chan struct{})
	sd.mu.Unlock()
}

// GoOnline connects every enrolled device over MQTT and keeps it online
// until Close. Devices that fail to connect are reported in the error (the
// fleet holds the others).
func GoOnline(ctx context.Context, devs []*Device, o SoakOptions) (*Fleet, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	runCtx, stop := context.WithCancel(context.Background())
	f := &Fleet{o: o, byID: map[string]*soakDevice{}, stop: stop}
	for _, d := range devs {
		if d.Enrollment == nil {
			continue
		}
		sd := &soakDevice{d: d, versions: map[uint64]time.Time{}, changed: make(chan struct{})}
		f.devs = append(f.devs, sd)
		f.byID[d.Enrollment.DeviceID] = sd
	}
	var done, failed atomic.Int64
	stopProgress := progress(o.Progress, len(f.devs), &done, &failed, time.Now())
	work := make(chan *soakDevice)
	var errMu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range min(o.Concurrency, max(len(f.devs), 1)) {
		wg.Go(func() {
			for sd := range work {
				if err := f.connect(ctx, sd); err != nil {
					failed.Add(1)
					errMu.Lock()
					errs = append(errs, fmt.Errorf("%s: %w", sd.d.Bundle.Serial, err))
					errMu.Unlock()
				}
				done.Add(1)
			}
		})
	}
	for _, sd := range f.devs {
		work <- sd
	}
	close(work)
	wg.Wait()
	stopProgress()
	for _, sd := range f.devs {
		f.wg.Go(func() { f.live(runCtx, sd) })
	}
	if len(errs) > 0 {
		return f, fmt.Errorf("%d of %d devices did not come online; first: %w", len(errs), len(f.devs), errs[0])
	}
	return f, nil
}

// connect opens the device's session; configs it receives are recorded and
// acknowledged by live.
func (f *Fleet) connect(ctx context.Context, sd *soakDevice) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Only the loss of the session this call opens counts: a session the
	// device itself replaced (after a certificate renewal) does not.
	var mine *Session
	s, err := sd.d.ConnectMQTT(cctx, MQTTOptions{Broker: f.o.Broker, OnConnectionLost: func(err error) {
		sd.note(func() {
			if mine == nil || sd.s == mine {
				sd.cut, sd.cutWhy = time.Now(), "connection lost: "+err.Error()
			}
		})
	}})
	if err != nil {
		return err
	}
	sd.note(func() { mine, sd.s = s, s }) // a loss reported before this stays recorded
	return nil
}

// live runs one device until the fleet closes or its session is cut.
func (f *Fleet) live(ctx context.Context, sd *soakDevice) {
	lease := timerFor(f.o.LeaseEvery)
	cert := timerFor(f.o.CertEvery)
	defer lease.Stop()
	defer cert.Stop()
	for {
		sd.mu.Lock()
		s, changed, cut := sd.s, sd.changed, !sd.cut.IsZero()
		sd.mu.Unlock()
		if s == nil || cut {
			return
		}
		select {
		case <-ctx.Done():
			s.Close()
			return
		case <-changed:
		case cfg := <-s.configs:
			at := time.Now()
			sd.note(func() { sd.versions[cfg.ConfigVersion] = at })
			health := "ok"
			if t := cfg.Firmware; t != nil && t.Version != sd.d.FirmwareVersion() {
				// A new target: download, verify and install it, then report.
				fctx, cancel := context.WithTimeout(ctx, time.Minute)
				_, err := sd.d.UpdateFirmware(fctx, t, FirmwareOptions{CoAP: f.o.FirmwareOverCoAP})
				cancel()
				if err != nil {
					health = "firmware_refused"
					f.stats.fwRefused.Add(1)
				} else {
					f.stats.fwUpdates.Add(1)
				}
			}
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := s.ReportState(actx, wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: sd.d.FirmwareVersion(), Health: health})
			cancel()
			sd.count(err, &f.stats.acks, &f.stats.ackErrors)
		case <-lease.C:
			actx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := s.RenewLease(actx)
			cancel()
			sd.count(err, &f.stats.leases, &f.stats.leaseErrors)
			lease.Reset(f.o.LeaseEvery)
		case <-cert.C:
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := s.RenewCertificate(actx)
			if err == nil { // a device reconnects with its new certificate
				s.Close()
				if err = f.connect(actx, sd); err != nil {
					// Refused (revoked meanwhile) or unreachable: offline.
					sd.note(func() { sd.cut, sd.cutWhy = time.Now(), "reconnect after renewal: "+err.Error() })
				}
			}
			cancel()
			sd.count(err, &f.stats.certs, &f.stats.certErrors)
			cert.Reset(f.o.CertEvery)
		}
	}
}

// timerFor fires first at a random point of every (so that a fleet does not
// renew in step), never when every is 0.
func timerFor(every time.Duration) *time.Timer {
	if every <= 0 {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	return time.NewTimer(time.Duration(rand.Int64N(int64(every))) + time.Millisecond)
}

// count adds one to ok or failed. An operation that failed because the
// server cut the session (revocation) is not a failure of the operation.
func (sd *soakDevice) count(err error, ok, failed *atomic.Int64) {
	if err == nil {
		ok.Add(1)
		return
	}
	time.Sleep(100 * time.Millisecond) // paho reports the lost connection shortly after the failed call
	sd.mu.Lock()
	cut := !sd.cut.IsZero()
	sd.mu.Unlock()
	if !cut {
		failed.Add(1)
	}
}

// Online counts devices whose session is open.
func (f *Fleet) Online() int {
	n := 0
	for _, sd := range f.devs {
		sd.mu.Lock()
		if sd.s != nil && sd.cut.IsZero() {
			n++
		}
		sd.mu.Unlock()
	}
	return n
}

// DeviceIDs lists the devices of the fleet.
func (f *Fleet) DeviceIDs() []string {
	ids := make([]string, len(f.devs))
	for i, sd := range f.devs {
		ids[i] = sd.d.Enrollment.DeviceID
	}
	return ids
}

// ErrNotAll is returned by the waits when some devices did not see the
// event before the context ended; the latencies of those that did come
// with it.
var ErrNotAll = errors.New("not every device saw it")

// Versions is the newest config version each device has received, for
// WaitConfig: take it before changing the config.
func (f *Fleet) Versions() map[string]uint64 {
	out := make(map[string]uint64, len(f.devs))
	for _, sd := range f.devs {
		sd.mu.Lock()
		for v := range sd.versions {
			out[sd.d.Enrollment.DeviceID] = max(out[sd.d.Enrollment.DeviceID], v)
		}
		sd.mu.Unlock()
	}
	return out
}

// WaitConfig waits until every device that is online has received a config
// newer than it had in before (from Versions), and returns, per device, how
// long after since the first such config arrived.
func (f *Fleet) WaitConfig(ctx context.Context, before map[string]uint64, since time.Time) ([]time.Duration, error) {
	return f.waitAll(ctx, f.devs, func(sd *soakDevice) (time.Time, bool) {
		if !sd.cut.IsZero() {
			return time.Time{}, true // offline: not waited for
		}
		var first time.Time
		for ver, at := range sd.versions {
			if ver > before[sd.d.Enrollment.DeviceID] && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
		return first, !first.IsZero()
	}, since)
}

// WaitCut waits until the server has closed the session of every device in
// ids, and returns, per device, how long after since it did.
func (f *Fleet) WaitCut(ctx context.Context, ids []string, since time.Time) ([]time.Duration, error) {
	var devs []*soakDevice
	for _, id := range ids {
		sd, ok := f.byID[id]
		if !ok {
			return nil, fmt.Errorf("device %s is not in the fleet", id)
		}
		devs = append(devs, sd)
	}
	return f.waitAll(ctx, devs, func(sd *soakDevice) (time.Time, bool) { return sd.cut, !sd.cut.IsZero() }, since)
}

func (f *Fleet) waitAll(ctx context.Context, devs []*soakDevice, seen func(*soakDevice) (time.Time, bool), since time.Time) ([]time.Duration, error) {
	var lat []time.Duration
	for _, sd := range devs {
		for {
			sd.mu.Lock()
			at, ok := seen(sd)
			changed := sd.changed
			sd.mu.Unlock()
			if ok {
				if !at.IsZero() {
					lat = append(lat, at.Sub(since))
				}
				break
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return lat, fmt.Errorf("%w (%d of %d)", ErrNotAll, len(lat), len(devs))
			}
		}
	}
	return lat, nil
}

// SoakStats counts what the devices did while online.
type SoakStats struct {
	Devices          int   `json:"devices"`
	Online           int   `json:"online"`
	Acks             int64 `json:"config_acks"`
	AckErrors        int64 `json:"config_ack_errors,omitempty"`
	LeaseRenewals    int64 `json:"lease_renewals"`
	LeaseErrors      int64 `json:"lease_renewal_errors,omitempty"`
	CertRenewals     int64 `json:"cert_renewals"`
	CertRenewalError int64 `json:"cert_renewal_errors,omitempty"`
	FirmwareUpdates  int64 `json:"firmware_updates,omitempty"`
	FirmwareRefused  int64 `json:"firmware_refused,omitempty"`
	// Offline counts the devices that went offline, by what they saw (a
	// revoked device's session is cut: "connection lost: EOF").
	Offline map[string]int `json:"offline,omitempty"`
}

// Stats reports the fleet's counters.
func (f *Fleet) Stats() SoakStats {
	offline := map[string]int{}
	for _, sd := range f.devs {
		sd.mu.Lock()
		if !sd.cut.IsZero() {
			offline[sd.cutWhy]++
		}
		sd.mu.Unlock()
	}
	if len(offline) == 0 {
		offline = nil
	}
	return SoakStats{Devices: len(f.devs), Online: f.Online(), Offline: offline,
		Acks: f.stats.acks.Load(), AckErrors: f.stats.ackErrors.Load(),
		LeaseRenewals: f.stats.leases.Load(), LeaseErrors: f.stats.leaseErrors.Load(),
		CertRenewals: f.stats.certs.Load(), CertRenewalError: f.stats.certErrors.Load(),
		FirmwareUpdates: f.stats.fwUpdates.Load(), FirmwareRefused: f.stats.fwRefused.Load()}
}

// Close disconnects every device and waits for them.
func (f *Fleet) Close() {
	f.stop()
	for _, sd := range f.devs {
		sd.note(func() {}) // wake each device so that it sees the end
	}
	f.wg.Wait() // each device's loop closes its session
}

// Latencies summarises how long a set of devices took to see something.
type Latencies struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

// Percentiles computes the percentiles of lat (which it sorts).
func Percentiles(lat []time.Duration) Latencies {
	if len(lat) == 0 {
		return Latencies{}
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return Latencies{N: len(lat), P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: lat[len(lat)-1]}
}

func (l Latencies) String() string {
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("%d devices: p50 %v p90 %v p99 %v max %v", l.N, r(l.P50), r(l.P90), r(l.P99), r(l.Max))
}
