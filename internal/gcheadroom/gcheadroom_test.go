package gcheadroom_test

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/gcheadroom"
)

func TestPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		scan, headroom uint64
		base, want     int
	}{
		{32 * mib, 128 * mib, 100, 400},  // small heap: the goal is live+headroom
		{128 * mib, 128 * mib, 100, 100}, // scanned = headroom: GOGC's own goal
		{512 * mib, 128 * mib, 100, 100}, // large heap: never below base
		{64 * mib, 128 * mib, 300, 300},  // base above what the headroom asks
		{0, 128 * mib, 100, 3200},        // nothing live yet: the runtime's 4 MiB minimum heap, scaled, stays under the headroom
		{1, 128 * mib, 100, 3200},
		{1, 2 * mib, 100, 100}, // a headroom under the runtime's minimum heap
	} {
		if got := gcheadroom.PercentFor(c.scan, c.headroom, c.base); got != c.want {
			t.Errorf("PercentFor(%d MiB scanned, %d MiB headroom, %d) = %d, want %d", c.scan/mib, c.headroom/mib, c.base, got, c.want)
		}
	}
}

// gcPercent reads the runtime's GC percent.
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

func gcCycles() uint64 {
	s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// settle runs collections until the tuner's finalizer has run after one.
func settle(t *testing.T, want func(int) bool) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		time.Sleep(10 * time.Millisecond) // the finalizer goroutine runs
		p := gcPercent()
		if want(p) || time.Now().After(deadline) {
			return p
		}
	}
}

var sink []byte

// churn allocates n bytes of short-lived garbage, in 64 KiB pieces.
func churn(n int) {
	for i := 0; i < n>>16; i++ {
		sink = make([]byte, 64<<10)
	}
	sink = nil
}

// TestTunerFollowsLiveHeap checks the runtime's own GC percent and cycle
// count: a small live heap gets the headroom, so churning 256 MiB
// takes a handful of collections instead of dozens; a live heap larger than
// the headroom gets GOGC's percent back; Stop restores it too.
func TestTunerFollowsLiveHeap(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	const mib = 1 << 20

	before := gcCycles()
	churn(256 * mib)
	untuned := gcCycles() - before

	tu := gcheadroom.Start(64*mib, 100)
	defer tu.Stop()
	p := settle(t, func(p int) bool { return p > 400 })
	if p <= 400 || p > 1600 {
		t.Fatalf("GC percent with a few MiB live and a 64 MiB headroom: %d, want well above 100 and at most 1600 (64 MiB over the runtime's 4 MiB minimum heap)", p)
	}
	if tu.Percent() != p {
		t.Errorf("Percent() = %d, the runtime has %d", tu.Percent(), p)
	}
	before = gcCycles()
	churn(256 * mib)
	tuned := gcCycles() - before
	t.Logf("256 MiB of garbage: %d collections at GOGC=100, %d with a 64 MiB headroom (percent %d)", untuned, tuned, p)
	if tuned*4 > untuned {
		t.Errorf("collections with the headroom: %d, want at most a quarter of %d", tuned, untuned)
	}

	live := make([][]byte, 0, 128) // 128 MiB live: past the headroom
	for range 128 {
		live = append(live, make([]byte, mib))
	}
	if p := settle(t, func(p int) bool { return p == 100 }); p != 100 {
		t.Errorf("GC percent with 128 MiB live: %d, want GOGC's 100", p)
	}
	runtime.KeepAlive(live)
	live = nil

	settle(t, func(p int) bool { return p > 400 })
	tu.Stop()
	if p := gcPercent(); p != 100 {
		t.Errorf("GC percent after Stop: %d, want 100", p)
	}
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if p := gcPercent(); p != 100 {
		t.Errorf("GC percent a collection after Stop: %d, want 100 (the tuner still running)", p)
	}
}

func TestZeroHeadroomDoesNothing(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tu := gcheadroom.Start(0, 100)
	settle(t, func(int) bool { return true })
	if p := gcPercent(); p != 100 {
		t.Errorf("GC percent with no headroom: %d, want 100", p)
	}
	tu.Stop()
}
