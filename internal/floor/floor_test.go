package floor

import (
	"testing"
	"time"
)

func TestOnceAndMeasure(t *testing.T) {
	d, err := Measure(20 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > 50*time.Millisecond {
		t.Fatalf("floor %v per enrollment", d)
	}
}

// BenchmarkEnrollmentFloor is the server's unavoidable public-key work per
// enrollment on one core (docs/performance.md, issue 17's denominator).
func BenchmarkEnrollmentFloor(b *testing.B) {
	k, err := NewKeys()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := k.Once(); err != nil {
			b.Fatal(err)
		}
	}
}
