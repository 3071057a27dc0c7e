package server_test

import (
	"context"
	"testing"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
)

// BenchmarkEnrollDTLS measures whole enrollments over DTLS on loopback, the
// device side (simulator) running on the same machine: handshake, CSR,
// signing, lease allocation and the bbolt commit. docs/performance.md.
func BenchmarkEnrollDTLS(b *testing.B) { benchEnroll(b, "coap") }

// BenchmarkEnrollMQTT is the same over MQTT/TLS with the embedded broker: a
// TLS handshake, CONNECT, SUBSCRIBE, PUBLISH and the reply per device.
func BenchmarkEnrollMQTT(b *testing.B) { benchEnroll(b, "mqtt") }

func benchEnroll(b *testing.B, transport string) {
	env := servertest.Start(b)
	env.Site("bench", "10.0.0.0/8")
	bundles := env.Mint(b.N, "bench")
	b.ResetTimer()
	_, sum := simulator.Run(context.Background(), bundles, simulator.RunOptions{Concurrency: 64, Attempts: 1, Transport: transport})
	b.StopTimer()
	if sum.Failed > 0 {
		b.Fatalf("%d of %d failed: %v", sum.Failed, sum.Devices, sum.Reasons)
	}
	b.ReportMetric(sum.PerSecond, "enroll/s")
	b.ReportMetric(float64(sum.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(sum.P99.Microseconds())/1000, "p99-ms")
}
