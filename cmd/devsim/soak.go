package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/provisiond/provisiond/internal/floor"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// soakPlan is what a soak run does besides keeping devices online.
type soakPlan struct {
	duration    time.Duration
	opts        simulator.SoakOptions
	site        string // the site whose config is pushed
	pushes      int    // site-wide config pushes, spread over the duration
	revocations int    // devices revoked one by one at the end
	api         *httpapi.Client
	rssPID      int    // a local process whose RSS is read beside the server's (0: none)
	serverDebug string // the server's --debug-addr: collect there once all are online ("": no)
}

// soakReport is the soak part of devsim's summary.
type soakReport struct {
	Duration       time.Duration         `json:"duration_ns"`
	Stats          simulator.SoakStats   `json:"devices"`
	ConnectTime    time.Duration         `json:"connect_ns"`
	Pushes         []simulator.Latencies `json:"pushes,omitempty"`
	Push           simulator.Latencies   `json:"push"`
	Revocation     simulator.Latencies   `json:"revocation"`
	ServerRSSBytes int64                 `json:"server_rss_bytes,omitempty"`
	Server         serverMemory          `json:"server_memory"`
	// OnlineCollected is the server's memory with every device online,
	// before the first push, after three collections (--server-debug).
	OnlineCollected *serverMemory `json:"server_memory_online_collected,omitempty"`
	OtherRSSBytes   int64         `json:"other_rss_bytes,omitempty"` // --rss-pid's process
	Problems        []string      `json:"problems,omitempty"`
}

func (r soakReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "soak %v: %d of %d devices online (connected in %v); %d config acks, %d lease and %d certificate renewals",
		r.Duration.Round(time.Second), r.Stats.Online, r.Stats.Devices, r.ConnectTime.Round(time.Millisecond),
		r.Stats.Acks, r.Stats.LeaseRenewals, r.Stats.CertRenewals)
	if r.Stats.FirmwareUpdates+r.Stats.FirmwareRefused > 0 {
		fmt.Fprintf(&b, "; %d firmware updates installed, %d refused", r.Stats.FirmwareUpdates, r.Stats.FirmwareRefused)
	}
	if e := r.Stats.AckErrors + r.Stats.LeaseErrors + r.Stats.CertRenewalError; e > 0 {
		fmt.Fprintf(&b, " (%d failed)", e)
	}
	if r.Push.N > 0 {
		fmt.Fprintf(&b, "\n  config push reached %s", r.Push)
	}
	if r.Revocation.N > 0 {
		fmt.Fprintf(&b, "\n  revocation cut off %s", r.Revocation)
	}
	if r.ServerRSSBytes > 0 {
		fmt.Fprintf(&b, "\n  server RSS %d MB", r.ServerRSSBytes>>20)
		if m := r.Server; m.Goroutines > 0 {
			fmt.Fprintf(&b, ": live heap %d MB at the last collection, goroutine stacks %d MB (%d goroutines, %d MB of their stacks in use)",
				m.LiveHeapBytes>>20, m.StackBytes>>20, m.Goroutines, m.StackInUseBytes>>20)
		}
	}
	if m := r.OnlineCollected; m != nil {
		fmt.Fprintf(&b, "\n  server with every device online, before the pushes, after three collections: RSS %d MB, live heap %d MB, goroutine stacks %d MB (%d goroutines, %d MB of their stacks in use)",
			m.RSSBytes>>20, m.LiveHeapBytes>>20, m.StackBytes>>20, m.Goroutines, m.StackInUseBytes>>20)
	}
	if r.OtherRSSBytes > 0 {
		fmt.Fprintf(&b, "\n  --rss-pid process RSS %d MB", r.OtherRSSBytes>>20)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "\n  problem: %s", p)
	}
	return b.String()
}

// soak brings the enrolled devices online, pushes site configs and revokes
// devices through the ops API, and measures how fast each reached them.
func soak(ctx context.Context, outs []simulator.Outcome, p soakPlan, progress io.Writer) soakReport {
	var devs []*simulator.Device
	for _, o := range outs {
		if o.Err == nil && o.Device != nil {
			devs = append(devs, o.Device)
		}
	}
	var r soakReport
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }
	p.opts.Progress = progress
	t0 := time.Now()
	fleet, err := simulator.GoOnline(ctx, devs, p.opts)
	r.ConnectTime = time.Since(t0)
	if err != nil {
		problem("%v", err)
	}
	defer fleet.Close()
	start := time.Now()
	// The server's memory online, once the devices' first exchanges are
	// over: just before the first push (at the end with none).
	if p.serverDebug != "" && sleep(ctx, time.Until(start.Add(p.duration/time.Duration(p.pushes+1)))) {
		if m, err := collectedServerMemory(ctx, p.serverDebug, p.api); err == nil {
			r.OnlineCollected = &m
		} else {
			problem("server memory after collections: %v", err)
		}
	}
	var all []time.Duration
	for i := range p.pushes {
		if !sleep(ctx, time.Until(start.Add(p.duration*time.Duration(i+1)/time.Duration(p.pushes+1)))) {
			break
		}
		before := fleet.Versions()
		ntp := []string{fmt.Sprintf("ntp%d.devsim.example", i+1)}
		t := time.Now()
		if err := p.api.Do(ctx, "PATCH", "/api/v1/sites/"+p.site, httpapi.SiteRequest{NTP: &ntp}, nil); err != nil {
			problem("push %d: %v", i+1, err)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		lat, err := fleet.WaitConfig(wctx, before, t)
		cancel()
		if err != nil {
			problem("push %d: %v", i+1, err)
		}
		all = append(all, lat...)
		r.Pushes = append(r.Pushes, simulator.Percentiles(lat))
	}
	r.Push = simulator.Percentiles(all)
	if m, err := readServerMemory(ctx, p.api); err == nil {
		r.ServerRSSBytes, r.Server = m.RSSBytes, m
	} else {
		problem("server memory: %v", err)
	}
	if p.rssPID > 0 {
		if rss, err := floor.ProcessRSS(p.rssPID); err == nil {
			r.OtherRSSBytes = rss
		} else {
			problem("--rss-pid: %v", err)
		}
	}
	sleep(ctx, time.Until(start.Add(p.duration)))
	var cuts []time.Duration
	ids := fleet.DeviceIDs()
	for _, id := range ids[:min(p.revocations, len(ids))] {
		t := time.Now()
		if err := p.api.Do(ctx, "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{id}, Reason: "devsim soak"}, nil); err != nil {
			problem("revoke %s: %v", id, err)
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lat, err := fleet.WaitCut(wctx, []string{id}, t)
		cancel()
		if err != nil {
			problem("revoke %s: the device was not cut off: %v", id, err)
		}
		cuts = append(cuts, lat...)
	}
	r.Revocation = simulator.Percentiles(cuts)
	r.Duration = time.Since(start)
	r.Stats = fleet.Stats()
	return r
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// serverMemory is what the server's process holds, from its /metrics:
// RSS, the heap its last collection found live, and its goroutine stacks
// (allocated, and the part its last collection scanned).
type serverMemory struct {
	RSSBytes        int64 `json:"rss_bytes"`
	LiveHeapBytes   int64 `json:"live_heap_bytes"`
	StackBytes      int64 `json:"stack_bytes"`
	StackInUseBytes int64 `json:"stack_in_use_bytes"`
	Goroutines      int64 `json:"goroutines"`
}

func readServerMemory(ctx context.Context, api *httpapi.Client) (serverMemory, error) {
	m, err := scrapeServer(ctx, api)
	if err != nil {
		return serverMemory{}, err
	}
	rss, err := m.get("process_resident_memory_bytes")
	// A server older than the Go runtime metrics still gives its RSS; they
	// read as 0.
	return serverMemory{RSSBytes: int64(rss), LiveHeapBytes: int64(m["go_gc_heap_live_bytes"]),
		StackBytes: int64(m["go_memstats_stack_inuse_bytes"]), StackInUseBytes: int64(m["go_gc_scan_stack_bytes"]),
		Goroutines: int64(m["go_goroutines"])}, err
}

// collectedServerMemory has the server collect three times through its
// pprof endpoint (a heap profile with gc=1; a stack halves at most once a
// collection), then reads its memory.
func collectedServerMemory(ctx context.Context, debugAddr string, api *httpapi.Client) (serverMemory, error) {
	for range 3 {
		req, err := http.NewRequestWithContext(ctx, "GET", "http://"+debugAddr+"/debug/pprof/heap?gc=1", nil)
		if err != nil {
			return serverMemory{}, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return serverMemory{}, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s", req.URL, resp.Status)
		}
		if err != nil {
			return serverMemory{}, err
		}
	}
	return readServerMemory(ctx, api)
}
