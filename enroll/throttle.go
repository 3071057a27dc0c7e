package enroll

import (
	"sync"
	"time"
)

// throttle counts failed attempts per key (a serial, a source address) and
// blocks a key for a growing time once it has failed too often.
type throttle struct {
	mu      sync.Mutex
	entries map[string]*throttleEntry
	limit   int           // failures allowed within window before blocking
	window  time.Duration // failures older than this are forgotten
	base    time.Duration // first block; doubles with each further failure
	max     time.Duration // longest block
	maxKeys int           // memory bound; expired entries are dropped first
}

type throttleEntry struct {
	fails   int
	last    time.Time
	blocked time.Time // blocked until
}

func newThrottle(limit int, window, base, max time.Duration) *throttle {
	return &throttle{entries: map[string]*throttleEntry{}, limit: limit, window: window, base: base, max: max, maxKeys: 200_000}
}

// allow reports whether key may try now, and if not, how long to wait.
func (t *throttle) allow(key string, now time.Time) (bool, time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[key]
	if e == nil || !now.Before(e.blocked) {
		return true, 0
	}
	return false, e.blocked.Sub(now)
}

// fail records a failed attempt.
func (t *throttle) fail(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entries[key]
	if e == nil {
		if len(t.entries) >= t.maxKeys {
			t.sweep(now)
		}
		e = &throttleEntry{}
		t.entries[key] = e
	}
	if now.Sub(e.last) > t.window && now.After(e.blocked) {
		e.fails = 0
	}
	e.fails++
	e.last = now
	if over := e.fails - t.limit; over >= 0 {
		d := t.base << min(over, 20)
		if d > t.max || d <= 0 {
			d = t.max
		}
		e.blocked = now.Add(d)
	}
}

// succeed forgets a key's failures.
func (t *throttle) succeed(key string) {
	t.mu.Lock()
	delete(t.entries, key)
	t.mu.Unlock()
}

// sweep drops entries that are neither blocked nor recent. Called with mu held.
func (t *throttle) sweep(now time.Time) {
	for k, e := range t.entries {
		if now.Sub(e.last) > t.window && !now.Before(e.blocked) {
			delete(t.entries, k)
		}
	}
	if len(t.entries) >= t.maxKeys { // under attack from many keys: start afresh rather than grow
		clear(t.entries)
	}
}
