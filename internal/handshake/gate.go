// Package handshake bounds the (D)TLS handshakes a listener works on at once.
//
// A boot storm opens thousands of sessions together. Run all their
// handshakes at once on a few cores and each takes so long that devices
// retransmit and give up before theirs completes: the CPU goes to handshakes
// that are thrown away, and goodput collapses. Neither DTLS nor TLS has a
// "try later" answer before the handshake, so a [Gate] does what a TCP
// listen backlog does: a new session waits, at no CPU cost, for one of a
// fixed number of slots, and one that waits too long is dropped (the device
// retries by its own backoff).
//
// # Basics
//
// A listener calls [Gate.Acquire] before it runs a session's handshake. An
// enrolled device (its handshake presented a certificate) releases its
// [Slot] when the handshake ends. A bootstrap session calls [Slot.Hold]
// instead and keeps the slot until its enrollment is answered
// ([Slot.Release]), the session closes or the hold time passes: otherwise
// sessions would pass the gate faster than enrollments complete, and the
// enrollment admission control would refuse, with 5.03, sessions whose
// handshake the server has already paid for.
package handshake

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultSlots is the number of handshakes a listener works on at once by
// default: enough to keep both cores busy with handshake crypto, few enough
// that a boot storm waits instead of thrashing (docs/performance.md).
const DefaultSlots = 64

// ErrBusy is returned by Acquire when no slot freed up within the wait.
var ErrBusy = errors.New("handshake dropped: every handshake slot stayed busy")

// Gate is a fixed number of handshake slots.
type Gate struct {
	slots   chan struct{}
	maxWait time.Duration
	hold    time.Duration

	waiting atomic.Int64
	dropped atomic.Int64
}

// NewGate returns a gate of n slots; a session waits at most maxWait for
// one, and a held slot is released after hold at the latest.
func NewGate(n int, maxWait, hold time.Duration) *Gate {
	return &Gate{slots: make(chan struct{}, n), maxWait: maxWait, hold: hold}
}

// Stats describes a gate.
type Stats struct {
	InProgress int   // slots taken: handshakes, and bootstrap sessions not yet answered
	Waiting    int64 // sessions waiting for a slot now
	Dropped    int64 // sessions dropped after waiting too long, since start
}

// Stats reports the gate's state.
func (g *Gate) Stats() Stats {
	return Stats{InProgress: len(g.slots), Waiting: g.waiting.Load(), Dropped: g.dropped.Load()}
}

// Acquire waits for a slot, at most the gate's wait and never past ctx.
func (g *Gate) Acquire(ctx context.Context) (*Slot, error) {
	select {
	case g.slots <- struct{}{}:
		return &Slot{g: g}, nil
	default:
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	t := time.NewTimer(g.maxWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return &Slot{g: g}, nil
	case <-t.C:
		g.dropped.Add(1)
		return nil, ErrBusy
	case <-ctx.Done():
		g.dropped.Add(1)
		return nil, ctx.Err()
	}
}

// Slot is one session's place in a gate.
type Slot struct {
	g *Gate

	mu       sync.Mutex
	released bool
	timer    *time.Timer
}

// Hold keeps the slot after the handshake, until Release or the gate's
// hold time, whichever comes first.
func (s *Slot) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.released && s.timer == nil {
		s.timer = time.AfterFunc(s.g.hold, s.Release)
	}
}

// Release gives the slot back. Only the first call counts; a nil slot is
// allowed.
func (s *Slot) Release() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released {
		return
	}
	s.released = true
	if s.timer != nil {
		s.timer.Stop()
	}
	<-s.g.slots
}
