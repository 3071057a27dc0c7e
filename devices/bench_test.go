package devices_test

import (
	"context"
	"fmt"

	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// BenchmarkProvision measures enrollment commits (lease allocation + device
// write + audit event, fsync'd) from many goroutines, as the enrollment
// service issues them: bbolt batches them into shared transactions.
func BenchmarkProvision(b *testing.B) {
	s := open(b)
	st := site("p", "10.0.0.0/8")
	if _, err := s.CreateSite(context.Background(), st, devices.AuditEvent{}); err != nil {
		b.Fatal(err)
	}
	n := b.N
	rows := make([]devices.ImportRow, n)
	for i := range rows {
		rows[i] = devices.ImportRow{Serial: fmt.Sprintf("S%08d", i), Model: "M", TokenHash: hash("x")}
	}
	if _, _, err := s.ImportBatch(context.Background(), devices.Batch{ID: uuid.NewString(), Site: "p"}, rows, devices.AuditEvent{}); err != nil {
		b.Fatal(err)
	}
	ids := make([]devices.Device, n)
	for i := range ids {
		ids[i], _ = s.DeviceBySerial(context.Background(), rows[i].Serial)
	}
	var next atomic.Int64
	b.SetParallelism(32) // 64 committers on 2 cores, like 64 concurrent enrollments
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d := ids[next.Add(1)-1]
			if _, err := provision(s, d, time.Now()); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "commits/s")
}
