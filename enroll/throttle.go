package enroll

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// ThrottleStore keeps failure counts where every replica of a cluster sees
// them (the shared inventory), so that an attacker cannot multiply the
// budget by spreading attempts over replicas. Keys name the throttle and
// what it counts ("enroll-serial\x00SN-1"). Without one (a single node) the
// counts live in the process.
type ThrottleStore interface {
	Throttle(ctx context.Context, key string) (devices.Throttle, bool, error)
	// UpdateThrottle reads the key's state (zero when absent), lets fn
	// change it, and stores it, or deletes it when fn returns false.
	UpdateThrottle(ctx context.Context, key string, fn func(t *devices.Throttle) bool) error
}

// throttle counts failed attempts per key (a serial, a source address, an
// installer) and blocks a key for a growing time once it has failed too
// often.
type throttle struct {
	kind   string
	limit  int           // failures allowed within window before blocking
	window time.Duration // failures older than this are forgotten
	base   time.Duration // first block; doubles with each further failure
	max    time.Duration // longest block
	store  ThrottleStore // nil: the counts below
	log    *slog.Logger

	mu      sync.Mutex
	entries map[string]*devices.Throttle
	maxKeys int // memory bound; expired entries are dropped first
}

func newThrottle(kind string, limit int, window, base, max time.Duration, store ThrottleStore, log *slog.Logger) *throttle {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &throttle{kind: kind, limit: limit, window: window, base: base, max: max, store: store, log: log,
		entries: map[string]*devices.Throttle{}, maxKeys: 200_000}
}

func (t *throttle) key(k string) string { return t.kind + "\x00" + k }

// allow reports whether key may try now, and if not, how long to wait;
// seen says whether the key has failures on record (succeed clears them).
// A shared store that cannot be read is an error: the attempt could not go
// on without that store anyway.
func (t *throttle) allow(ctx context.Context, key string, now time.Time) (ok bool, wait time.Duration, seen bool, err error) {
	var e devices.Throttle
	if t.store != nil {
		if e, seen, err = t.store.Throttle(ctx, t.key(key)); err != nil {
			return false, 0, false, fmt.Errorf("read throttle: %w", err)
		}
	} else {
		t.mu.Lock()
		if p := t.entries[key]; p != nil {
			e, seen = *p, true
		}
		t.mu.Unlock()
	}
	if !seen || !now.Before(e.Blocked) {
		return true, 0, seen, nil
	}
	return false, e.Blocked.Sub(now), true, nil
}

// failed counts one more failure at now in e.
func (t *throttle) failed(e *devices.Throttle, now time.Time) {
	if now.Sub(e.Last) > t.window && now.After(e.Blocked) {
		e.Fails = 0
	}
	e.Fails++
	e.Last = now
	if over := e.Fails - t.limit; over >= 0 {
		d := t.base << min(over, 20)
		if d > t.max || d <= 0 {
			d = t.max
		}
		e.Blocked = now.Add(d)
	}
}

// fail records a failed attempt.
func (t *throttle) fail(ctx context.Context, key string, now time.Time) {
	if t.store != nil {
		err := t.store.UpdateThrottle(ctx, t.key(key), func(e *devices.Throttle) bool { t.failed(e, now); return true })
		if err != nil {
			t.log.Warn("record failed attempt", "throttle", t.kind, "err", err)
		}
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[key]
	if e == nil {
		if len(t.entries) >= t.maxKeys {
			t.sweep(now)
		}
		e = &devices.Throttle{}
		t.entries[key] = e
	}
	t.failed(e, now)
}

// succeed forgets a key's failures (seen: allow found some).
func (t *throttle) succeed(ctx context.Context, key string, seen bool) {
	if t.store != nil {
		if !seen {
			return // nothing on record: no write on the common path
		}
		if err := t.store.UpdateThrottle(ctx, t.key(key), func(*devices.Throttle) bool { return false }); err != nil {
			t.log.Warn("clear throttle", "throttle", t.kind, "err", err)
		}
		return
	}
	t.mu.Lock()
	delete(t.entries, key)
	t.mu.Unlock()
}

// sweep drops entries that are neither blocked nor recent. Called with mu held.
func (t *throttle) sweep(now time.Time) {
	for k, e := range t.entries {
		if now.Sub(e.Last) > t.window && !now.Before(e.Blocked) {
			delete(t.entries, k)
		}
	}
	if len(t.entries) >= t.maxKeys { // under attack from many keys: start afresh rather than grow
		clear(t.entries)
	}
}
