package simulator

import (
	"testing"
	"time"
)

func TestArrivalSchedule(t *testing.T) {
	rate := RunOptions{Arrival: "rate", Rate: 50}
	if got := arrivalAt(rate, 100); got != 2*time.Second {
		t.Errorf("rate 50/s: device 100 at %v, want 2s", got)
	}
	ramp := RunOptions{Arrival: "ramp", Rate: 100, Ramp: 10 * time.Second} // 500 devices during the ramp
	prev := time.Duration(-1)
	for i := range 2000 {
		at := arrivalAt(ramp, i)
		if at < prev {
			t.Fatalf("device %d arrives at %v, before device %d at %v", i, at, i-1, prev)
		}
		prev = at
	}
	if at := arrivalAt(ramp, 500); at < 9900*time.Millisecond || at > 10100*time.Millisecond {
		t.Errorf("the 500th device (end of the ramp) at %v, want 10s", at)
	}
	if at := arrivalAt(ramp, 600); at < 10900*time.Millisecond || at > 11100*time.Millisecond {
		t.Errorf("device 600 at %v, want 11s (100/s after the ramp)", at)
	}
	// Early in the ramp devices come slower than late in it.
	if early, late := arrivalAt(ramp, 10)-arrivalAt(ramp, 0), arrivalAt(ramp, 490)-arrivalAt(ramp, 480); early <= late {
		t.Errorf("first 10 devices over %v, last 10 of the ramp over %v", early, late)
	}
	if arrivalAt(RunOptions{}, 1000) != 0 {
		t.Error("a storm has no schedule")
	}
}

func TestBackoff(t *testing.T) {
	for n := 1; n <= 20; n++ {
		for range 200 {
			d := Backoff(n, 0, 0)
			if d <= 0 || d > 30*time.Second || d > 200*time.Millisecond<<min(n-1, 10) {
				t.Fatalf("attempt %d: %v out of bounds", n, d)
			}
			if h := Backoff(n, 4*time.Second, 0); h < 4*time.Second || h > 6*time.Second+30*time.Second {
				t.Fatalf("attempt %d with a 4s hint waits %v: sooner than the hint or too late", n, h)
			}
			if c := Backoff(n, 4*time.Second, time.Second); c > time.Second {
				t.Fatalf("capped at 1s, waits %v", c)
			}
		}
	}
	// Jitter: the same attempt does not always wait the same.
	seen := map[time.Duration]bool{}
	for range 50 {
		seen[Backoff(3, time.Second, 0)] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct waits in 50: no jitter", len(seen))
	}
}
