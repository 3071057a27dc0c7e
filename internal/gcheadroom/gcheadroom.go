// Package gcheadroom gives the Go collector a minimum heap growth between
// collections (provisiond --gc-headroom).
//
// With GOGC=100 the runtime collects each time the heap has grown by as much
// as is live. A server whose live heap is small but which allocates fast (an
// enrollment storm: tens of megabytes live, each handshake's garbage short
// lived) then collects many times a second, and the collector's marking and
// its assists take a tenth of the CPU or more. GOGC=400 would cut that, but
// it also lets a large live heap (10,000 MQTT sessions online: hundreds of
// megabytes) grow fourfold.
//
// Start keeps the collector's goal at the larger of the two: GOGC's, or
// the live heap plus a headroom. After each collection it reads what the
// pacer scales the percent by (the live heap, stacks and globals) and sets
// the percent so that the heap may grow by at least the headroom before the
// next; once those are past headroom×100/GOGC, the percent is GOGC's again.
// It is the effect of a heap "ballast", without the ballast.
package gcheadroom

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// Tuner adjusts the GC percent after each collection; Stop ends it.
type Tuner struct {
	headroom uint64 // bytes of growth the goal allows at least
	base     int    // the GC percent when the live heap is large
	stopped  atomic.Bool

	mu      sync.Mutex // one adjust at a time, and none after Stop
	percent int
	samples []metrics.Sample
}

// sentinel is allocated once per collection; its finalizer, run after the
// collection that found it unreachable, is how the tuner learns a cycle
// ended. It is large enough not to share a tiny-allocator block.
type sentinel struct{ _ [64]byte }

// Start begins tuning with at least headroom bytes of heap growth between
// collections, and base as the percent a large heap collects at (Go's
// GOGC, 100 by default). A headroom of 0 returns a Tuner that does nothing.
func Start(headroom uint64, base int) *Tuner {
	t := &Tuner{headroom: headroom, base: base, percent: base,
		samples: []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}}
	if headroom == 0 || base <= 0 {
		t.stopped.Store(true)
		return t
	}
	debug.SetGCPercent(base)
	t.adjust()
	t.arm()
	return t
}

func (t *Tuner) arm() {
	runtime.SetFinalizer(&sentinel{}, func(*sentinel) {
		if t.stopped.Load() {
			return
		}
		t.adjust()
		t.arm()
	})
}

// Percent is the GC percent the tuner set last.
func (t *Tuner) Percent() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.percent
}

// adjust sets the GC percent for the live heap the last collection found.
func (t *Tuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.samples)
	var scan uint64
	for _, s := range t.samples {
		if s.Value.Kind() != metrics.KindUint64 {
			return
		}
		scan += s.Value.Uint64()
	}
	want := PercentFor(scan, t.headroom, t.base)
	// SetGCPercent recomputes the pacer; skip changes of under 5 %.
	if d := want - t.percent; d > t.percent/20 || -d > t.percent/20 {
		debug.SetGCPercent(want)
		t.percent = want
	}
}

// heapMinimum is the runtime's smallest heap goal at GOGC=100 (4 MiB).
// The runtime scales it with the percent, so while little is live, a large
// percent would set a goal far above live+headroom; PercentFor stays under
// headroom×100/heapMinimum.
const heapMinimum = 4 << 20

// PercentFor is the GC percent that lets the heap grow by about headroom
// bytes before the next collection, and never less than base. scan is what the
// runtime's pacer multiplies the percent by: the live heap, the stacks and
// the globals (runtime/metrics' /gc/heap/live, /gc/scan/stack and
// /gc/scan/globals).
func PercentFor(scan, headroom uint64, base int) int {
	p := headroom * 100 / heapMinimum
	if scan > 0 && headroom*100/scan < p {
		p = headroom * 100 / scan
	}
	if p < uint64(base) {
		return base
	}
	return int(p)
}

// Stop ends the tuning and sets the GC percent back to base.
func (t *Tuner) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Swap(true) {
		return
	}
	debug.SetGCPercent(t.base)
	t.percent = t.base
}
