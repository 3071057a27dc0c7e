package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/provisiond/provisiond/internal/floor"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// cpuReport is the CPU time each side spent per enrollment during the run,
// against the server's public-key floor measured just before it
// (internal/floor, one core) on the same machine.
type cpuReport struct {
	Floor        time.Duration `json:"floor_ns"`
	Server       time.Duration `json:"server_ns"` // per enrollment, from the server's process_cpu_seconds_total
	Devsim       time.Duration `json:"devsim_ns"` // per enrollment, this process's user+system time
	ServerRatio  float64       `json:"server_to_floor"`
	DevsimRatio  float64       `json:"devsim_to_server"`
	ServerRSS    int64         `json:"server_rss_bytes"` // the server's resident memory when the run ended
	ServerBefore float64       `json:"-"`
	DevsimBefore time.Duration `json:"-"`
}

func (r cpuReport) String() string {
	return fmt.Sprintf("CPU per enrollment: server %v (%.2fx the public-key floor of %v), devsim %v (%.2fx the server's); server RSS %d MB at the end",
		r.Server.Round(time.Microsecond), r.ServerRatio, r.Floor.Round(time.Microsecond), r.Devsim.Round(time.Microsecond), r.DevsimRatio, r.ServerRSS>>20)
}

// startCPU measures the floor of the transport's enrollment (EST devices
// then read their config over mutual TLS: a second handshake) and reads
// both processes' CPU time.
func startCPU(ctx context.Context, api *httpapi.Client, transport string) (cpuReport, error) {
	var r cpuReport
	var err error
	if r.Floor, err = floor.Measure(2*time.Second, transport == "est"); err != nil {
		return r, err
	}
	m, err := scrapeServer(ctx, api)
	if err != nil {
		return r, err
	}
	if r.ServerBefore, err = m.get("process_cpu_seconds_total"); err != nil {
		return r, err
	}
	r.DevsimBefore = floor.ProcessCPU()
	return r, nil
}

// finish reads the CPU times again and divides by the enrollments.
func (r cpuReport) finish(ctx context.Context, api *httpapi.Client, enrolled int) (cpuReport, error) {
	if enrolled == 0 {
		return r, fmt.Errorf("no enrollment to divide by")
	}
	m, err := scrapeServer(ctx, api)
	if err != nil {
		return r, err
	}
	after, err := m.get("process_cpu_seconds_total")
	if err != nil {
		return r, err
	}
	rss, err := m.get("process_resident_memory_bytes")
	if err != nil {
		return r, err
	}
	r.ServerRSS = int64(rss)
	r.Server = time.Duration((after - r.ServerBefore) * float64(time.Second) / float64(enrolled))
	r.Devsim = (floor.ProcessCPU() - r.DevsimBefore) / time.Duration(enrolled)
	r.ServerRatio = float64(r.Server) / float64(r.Floor)
	if r.Server > 0 {
		r.DevsimRatio = float64(r.Devsim) / float64(r.Server)
	}
	return r, nil
}

// serverMetrics is one scrape of the server's /metrics: its unlabelled
// samples by name.
type serverMetrics map[string]float64

func scrapeServer(ctx context.Context, api *httpapi.Client) (serverMetrics, error) {
	var raw []byte
	if err := api.Do(ctx, "GET", "/metrics", nil, &raw); err != nil {
		return nil, err
	}
	m := serverMetrics{}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", name, v, err)
		}
		m[name] = f
	}
	return m, sc.Err()
}

// get is a sample the server must have.
func (m serverMetrics) get(name string) (float64, error) {
	v, ok := m[name]
	if !ok {
		return 0, fmt.Errorf("no %s in /metrics", name)
	}
	return v, nil
}
