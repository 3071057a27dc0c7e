package simulator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/provisiond/provisiond/transport/wire"
)

// RunOptions tune a fleet run.
type RunOptions struct {
	Concurrency int         // devices enrolling at once; default 64
	Transport   string      // "coap" (default), "mqtt", "est", "estcoaps", "lwm2m", or "mix" (coap and mqtt alternating)
	Endpoint    string      // overrides every bundle's CoAP endpoint
	Broker      string      // overrides every bundle's MQTT endpoint
	HTTPS       string      // overrides every bundle's https:// (EST) endpoint
	Format      wire.Format // CBOR (default) or JSON
	// LwM2MFormat is the content-format an LwM2M client asks for (pct=);
	// 0 asks for none (TLV).
	LwM2MFormat message.MediaType
	Timeout     time.Duration // per attempt; default 15s
	Attempts    int           // per device, including the first; default 3
	MaxWait     time.Duration // caps every wait between attempts (tests, impatient runs); 0: honour the server's hints fully
	Progress    io.Writer     // one line per second when set
	PQ          bool          // devices offer the hybrid post-quantum TLS key exchange (Device.PQ)

	// Arrival: "storm" (default: every device at once, Concurrency at a time),
	// "rate" (Rate devices per second) or "ramp" (a rate growing linearly
	// from 0 to Rate over Ramp, then steady).
	Arrival string
	Rate    float64
	Ramp    time.Duration
}

// arrivalAt is when device i (0-based) boots, counted from the start.
func arrivalAt(o RunOptions, i int) time.Duration {
	switch o.Arrival {
	case "rate":
		return time.Duration(float64(i) / o.Rate * float64(time.Second))
	case "ramp":
		ramp := o.Ramp.Seconds()
		rampDevices := o.Rate * ramp / 2 // devices that arrive during the ramp
		if float64(i) < rampDevices {
			return time.Duration(math.Sqrt(2*float64(i)*ramp/o.Rate) * float64(time.Second))
		}
		return time.Duration((ramp + (float64(i)-rampDevices)/o.Rate) * float64(time.Second))
	}
	return 0
}

// Backoff is the wait before attempt n+1 after n failed ones: exponential
// with full jitter (200 ms, 400 ms, ... up to 30 s), but never less than the
// server's hint, itself jittered by up to half so that a refused storm does
// not come back in step. max > 0 caps the result.
func Backoff(n int, hint, max time.Duration) time.Duration {
	ceiling := min(200*time.Millisecond<<min(n-1, 10), 30*time.Second)
	d := time.Duration(rand.Int64N(int64(ceiling)) + 1)
	if hint > 0 {
		d = max2(d, hint+time.Duration(rand.Int64N(int64(hint)/2+1)))
	}
	if max > 0 && d > max {
		d = max
	}
	return d
}

func max2(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

// Outcome is one device's result.
type Outcome struct {
	Serial   string
	Device   *Device
	Err      error
	Latency  time.Duration // of the successful (or last) attempt
	Attempts int
	Retried  []string // the reason of each failed attempt before the last
}

// Summary aggregates a run.
type Summary struct {
	Devices   int            `json:"devices"`
	Enrolled  int            `json:"enrolled"`
	Failed    int            `json:"failed"`
	Reasons   map[string]int `json:"failed_by_reason,omitempty"`
	Attempts  int            `json:"attempts"`
	Retries   map[string]int `json:"retried_by_reason,omitempty"` // failed attempts that were retried
	Duration  time.Duration  `json:"duration_ns"`
	PerSecond float64        `json:"enrollments_per_second"`
	P50       time.Duration  `json:"p50_ns"`
	P90       time.Duration  `json:"p90_ns"`
	P99       time.Duration  `json:"p99_ns"`
	Max       time.Duration  `json:"max_ns"`
}

func (s Summary) String() string {
	out := fmt.Sprintf("devices %d: enrolled %d, failed %d in %v (%.0f enrollments/s); latency p50 %v p90 %v p99 %v max %v",
		s.Devices, s.Enrolled, s.Failed, s.Duration.Round(time.Millisecond), s.PerSecond,
		s.P50.Round(100*time.Microsecond), s.P90.Round(100*time.Microsecond), s.P99.Round(100*time.Microsecond), s.Max.Round(100*time.Microsecond))
	if s.Attempts > s.Devices {
		out += fmt.Sprintf("\n  %d attempts for %d devices", s.Attempts, s.Devices)
	}
	for _, r := range slices.Sorted(maps.Keys(s.Reasons)) {
		out += fmt.Sprintf("\n  failed %s: %d", r, s.Reasons[r])
	}
	for _, r := range slices.Sorted(maps.Keys(s.Retries)) {
		out += fmt.Sprintf("\n  retried after %s: %d", r, s.Retries[r])
	}
	return out
}

func retryable(err error) (bool, time.Duration) {
	var e *Error
	if errors.As(err, &e) {
		switch e.Body.Code {
		case "throttled", "pool_exhausted", "not_claimed", "internal", "overloaded":
			return true, e.MaxAge
		}
		return e.Code >= 160, e.MaxAge // 5.xx
	}
	return true, 0 // timeouts, lost datagrams, handshake failures
}

// Run enrolls every bundle and returns each outcome (in bundle order) and a summary.
func Run(ctx context.Context, bundles []wire.Bundle, o RunOptions) ([]Outcome, Summary) {
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Timeout == 0 {
		o.Timeout = 15 * time.Second
	}
	if o.Attempts <= 0 {
		o.Attempts = 3
	}
	if (o.Arrival == "rate" || o.Arrival == "ramp") && o.Rate <= 0 {
		o.Rate = 100
	}
	outs := make([]Outcome, len(bundles))
	var done, failed atomic.Int64
	start := time.Now()
	stopProgress := progress(o.Progress, len(bundles), &done, &failed, start)
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(o.Concurrency, len(bundles)) {
		wg.Go(func() {
			for i := range work {
				outs[i] = enrollOne(ctx, bundles[i], transportOf(o.Transport, i), o)
				done.Add(1)
				if outs[i].Err != nil {
					failed.Add(1)
				}
			}
		})
	}
	for i := range bundles {
		if at := arrivalAt(o, i); at > 0 {
			select {
			case <-time.After(time.Until(start.Add(at))):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			outs[i] = Outcome{Serial: bundles[i].Serial, Err: ctx.Err()}
			continue
		}
		work <- i
	}
	close(work)
	wg.Wait()
	stopProgress()
	return outs, Summarize(outs, time.Since(start))
}

// transportOf is what device i enrolls over.
func transportOf(transport string, i int) string {
	switch {
	case transport == "mix" && i%2 == 1:
		return "mqtt"
	case transport == "mix", transport == "":
		return "coap"
	}
	return transport
}

func enrollOne(ctx context.Context, b wire.Bundle, transport string, o RunOptions) Outcome {
	out := Outcome{Serial: b.Serial}
	d, err := NewDevice(b)
	if err != nil {
		out.Err = err
		return out
	}
	out.Device = d
	d.PQ = o.PQ
	for out.Attempts < o.Attempts {
		out.Attempts++
		actx, cancel := context.WithTimeout(ctx, o.Timeout)
		t0 := time.Now()
		switch transport {
		case "mqtt":
			_, err = d.EnrollMQTT(actx, MQTTOptions{Broker: o.Broker, Format: o.Format})
		case "est":
			_, err = d.EnrollEST(actx, ESTOptions{Endpoint: o.HTTPS})
		case "estcoaps":
			_, err = d.EnrollESTCoAPS(actx, EnrollOptions{Endpoint: o.Endpoint})
		case "lwm2m":
			// With its bootstrap PSK when the bundle has one, else its IDevID.
			_, err = d.BootstrapLwM2M(actx, LwM2MOptions{Endpoint: o.Endpoint, PSK: b.LwM2MPSK != "", Format: o.LwM2MFormat})
		default:
			_, err = d.Enroll(actx, EnrollOptions{Endpoint: o.Endpoint, Format: o.Format})
		}
		out.Latency = time.Since(t0)
		cancel()
		out.Err = err
		if err == nil || ctx.Err() != nil {
			return out
		}
		again, hint := retryable(err)
		if !again || out.Attempts == o.Attempts {
			return out
		}
		out.Retried = append(out.Retried, Reason(err))
		select {
		case <-time.After(Backoff(out.Attempts, hint, o.MaxWait)):
		case <-ctx.Done():
			return out
		}
	}
	return out
}

// Summarize computes counts, rate and latency percentiles of successful enrollments.
func Summarize(outs []Outcome, elapsed time.Duration) Summary {
	s := Summary{Devices: len(outs), Duration: elapsed, Reasons: map[string]int{}, Retries: map[string]int{}}
	var lat []time.Duration
	for _, o := range outs {
		s.Attempts += o.Attempts
		for _, r := range o.Retried {
			s.Retries[r]++
		}
		if o.Err != nil {
			s.Failed++
			s.Reasons[Reason(o.Err)]++
			continue
		}
		s.Enrolled++
		lat = append(lat, o.Latency)
	}
	if elapsed > 0 {
		s.PerSecond = float64(s.Enrolled) / elapsed.Seconds()
	}
	l := Percentiles(lat)
	s.P50, s.P90, s.P99, s.Max = l.P50, l.P90, l.P99, l.Max
	if len(s.Reasons) == 0 {
		s.Reasons = nil
	}
	if len(s.Retries) == 0 {
		s.Retries = nil
	}
	return s
}

func progress(w io.Writer, total int, done, failed *atomic.Int64, start time.Time) func() {
	if w == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				n := done.Load()
				fmt.Fprintf(w, "\r%d/%d done, %d failed, %.0f/s   ", n, total, failed.Load(), float64(n)/time.Since(start).Seconds())
			}
		}
	})
	return func() { close(stop); wg.Wait(); fmt.Fprintln(w) }
}
