package floor

import (
	"os"
	"testing"
	"time"
)

func TestOnceAndMeasure(t *testing.T) {
	d, err := Measure(20*time.Millisecond, false)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > 50*time.Millisecond {
		t.Fatalf("floor %v per enrollment", d)
	}
	m, err := Measure(20*time.Millisecond, true)
	if err != nil {
		t.Fatal(err)
	}
	if m <= d {
		t.Fatalf("a second, mutual handshake costs nothing: %v against %v", m, d)
	}
}

// BenchmarkEnrollmentFloor is the server's unavoidable public-key work per
// enrollment on one core (docs/performance.md, issue 17's denominator);
// est adds the mutual-TLS handshake of an EST device reading its config
// with its new certificate.
func BenchmarkEnrollmentFloor(b *testing.B) {
	k, err := NewKeys()
	if err != nil {
		b.Fatal(err)
	}
	for _, mutual := range []bool{false, true} {
		name := map[bool]string{false: "enrollment", true: "est"}[mutual]
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if err := k.Once(); err != nil {
					b.Fatal(err)
				}
				if mutual {
					if err := k.MutualHandshake(); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// ProcessRSS reads this test process's own resident memory the way devsim
// --rss-pid reads an external broker's.
func TestProcessRSS(t *testing.T) {
	rss, err := ProcessRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Fatalf("own RSS %d, %v", rss, err)
	}
	if _, err := ProcessRSS(1 << 30); err == nil {
		t.Error("a process that does not exist: no error")
	}
}
