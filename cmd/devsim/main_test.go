package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

func TestDevsimMintsAndEnrolls(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	for _, args := range [][]string{
		{"--arrival", "rate", "--rate", "200", "--transport", "coap"},
		{"--arrival", "ramp", "--rate", "200", "--ramp", "100ms", "--transport", "mqtt"},
		{"--transport", "est"},
		{"--transport", "est", "--idevid"},
		{"--transport", "estcoaps", "--idevid"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"--mint", "30", "--site", "hq", "--data", env.DataDir, "--json"}, args...), &out, &errOut)
		if err != nil {
			t.Fatalf("devsim %v: %v\n%s", args, err, errOut.String())
		}
		var sum simulator.Summary
		if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.Enrolled != 30 || sum.Failed != 0 || sum.P99 <= 0 {
			t.Errorf("devsim %v: %+v %v\n%s", args, sum, err, out.String())
		}
	}
	for name, args := range map[string][]string{
		"neither bundles nor mint": {},
		"both":                     {"--mint", "1", "--bundles", "x"},
		"bad arrival":              {"--mint", "1", "--arrival", "flood"},
		"bad transport":            {"--mint", "1", "--transport", "zigbee"},
	} {
		var out bytes.Buffer
		if err := run(context.Background(), append(args, "--data", env.DataDir), &out, &out); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestDevsimCPU: --cpu reports the floor, both sides' CPU and the server's
// RSS; --cpu-profile writes a profile pprof reads (gzip'd protobuf).
func TestDevsimCPU(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	prof := filepath.Join(t.TempDir(), "devsim.prof")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"--mint", "20", "--site", "hq", "--data", env.DataDir, "--json", "--cpu", "--cpu-profile", prof}, &out, &errOut); err != nil {
		t.Fatalf("devsim --cpu: %v\n%s", err, errOut.String())
	}
	var got struct {
		Enrolled int        `json:"enrolled"`
		CPU      *cpuReport `json:"cpu"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.CPU == nil {
		t.Fatalf("summary: %v\n%s", err, out.String())
	}
	if c := got.CPU; got.Enrolled != 20 || c.Floor <= 0 || c.Server <= 0 || c.Devsim <= 0 || c.ServerRatio <= 0 || c.ServerRSS < 1<<20 {
		t.Errorf("--cpu report: %d enrolled, %+v", got.Enrolled, *c)
	}
	raw, err := os.ReadFile(prof)
	if err != nil || len(raw) < 100 || raw[0] != 0x1f || raw[1] != 0x8b {
		t.Errorf("--cpu-profile wrote %d bytes (%v), want a gzip'd profile", len(raw), err)
	}
	if err := run(context.Background(), []string{"--mint", "1", "--site", "hq", "--data", env.DataDir, "--cpu-profile", filepath.Join(prof, "x")}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "--cpu-profile") {
		t.Errorf("an unwritable --cpu-profile: %v, want an error naming it", err)
	}
}

// With --json, standard output is the summary and nothing else, even when
// every connection fails. (go-coap's default error handler prints to
// standard output; the simulator installs its own. This test does not reach
// the path where go-coap printed, a handshake that stalls half-way under a
// 10x storm; it guards the JSON output in general.)
func TestDevsimJSONStaysClean(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	// A peer that takes every datagram and never answers.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := silent.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	var out, errOut bytes.Buffer
	err = run(context.Background(), []string{"--mint", "3", "--site", "hq", "--data", env.DataDir, "--json",
		"--server", silent.LocalAddr().String(), "--attempts", "1", "--timeout", "500ms"}, &out, &errOut)
	if err == nil {
		t.Fatal("devsim against a dead endpoint reported success")
	}
	var sum simulator.Summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.Failed != 3 {
		t.Fatalf("stdout is not the JSON summary (%v):\n%s", err, out.String())
	}
}

func TestDevsimSoak(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.21.0.0/24")
	// Devices enrolled over CoAP and MQTT, and over EST-coaps with factory
	// certificates, then online over MQTT with the certificates they got.
	// The server's pprof endpoint (--debug-addr), in this process as the
	// server is: devsim has it collect once every device is online.
	var collections atomic.Int32
	debug := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/debug/pprof/heap" && r.URL.Query().Get("gc") == "1" {
			collections.Add(1)
		}
		pprof.Handler("heap").ServeHTTP(w, r)
	}))
	defer debug.Close()
	t.Run("mix", func(t *testing.T) {
		s := soakOnce(t, env, []string{"--transport", "mix", "--server-debug", strings.TrimPrefix(debug.URL, "http://")})
		if n := collections.Load(); n != 3 {
			t.Errorf("the server was asked to collect %d times, want 3", n)
		}
		if m := s.OnlineCollected; m == nil || m.LiveHeapBytes <= 0 || m.StackInUseBytes <= 0 || m.Goroutines < 12 || m.RSSBytes <= m.LiveHeapBytes {
			t.Errorf("server memory with 12 devices online, after collections: %+v", m)
		}
	})
	t.Run("estcoaps", func(t *testing.T) {
		if s := soakOnce(t, env, []string{"--transport", "estcoaps", "--idevid"}); s.OnlineCollected != nil {
			t.Error("memory after collections reported without --server-debug")
		}
	})
	var bad bytes.Buffer
	if err := run(context.Background(), []string{"--mint", "1", "--data", env.DataDir, "--soak", "1s"}, &bad, &bad); err == nil {
		t.Error("--soak with pushes but no --site: accepted")
	}
	if err := run(context.Background(), []string{"--mint", "1", "--data", env.DataDir, "--server-debug", "127.0.0.1:1"}, &bad, &bad); err == nil {
		t.Error("--server-debug without --soak: accepted")
	}
}

func soakOnce(t *testing.T, env *servertest.Env, transport []string) soakReport {
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"--mint", "12", "--site", "hq", "--data", env.DataDir, "--json",
		"--soak", "1500ms", "--pushes", "2", "--revoke", "3", "--renew-lease-every", "400ms", "--renew-cert-every", "1s"}, transport...), &out, &errOut)
	if err != nil {
		t.Fatalf("devsim: %v\n%s\n%s", err, out.String(), errOut.String())
	}
	var got struct {
		simulator.Summary
		Soak soakReport `json:"soak"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	s := got.Soak
	switch {
	case got.Enrolled != 12:
		t.Errorf("enrolled %d", got.Enrolled)
	case s.Stats.Devices != 12 || s.Stats.Online != 9:
		t.Errorf("devices %d, online after 3 revocations %d (offline: %v)", s.Stats.Devices, s.Stats.Online, s.Stats.Offline)
	case len(s.Pushes) != 2 || s.Push.N != 24 || s.Push.Max <= 0:
		t.Errorf("pushes %+v, overall %+v: want 2 reaching 12 devices each (offline: %v)", s.Pushes, s.Push, s.Stats.Offline)
	case s.Revocation.N != 3 || s.Revocation.Max <= 0:
		t.Errorf("revocations %+v", s.Revocation)
	case s.Stats.Acks < 36 || s.Stats.LeaseRenewals == 0 || s.Stats.CertRenewals == 0:
		t.Errorf("too little happened: %+v", s.Stats)
	case s.ServerRSSBytes < 1<<20:
		t.Errorf("server RSS %d", s.ServerRSSBytes)
	case s.Server.LiveHeapBytes <= 0 || s.Server.StackBytes < s.Server.StackInUseBytes || s.Server.StackInUseBytes <= 0 ||
		s.Server.Goroutines < 9 || s.Server.LiveHeapBytes >= s.ServerRSSBytes:
		t.Errorf("server memory %+v beside RSS %d: want a live heap under the RSS, stacks and a goroutine for each of 9 devices online", s.Server, s.ServerRSSBytes)
	case len(s.Problems) > 0:
		t.Errorf("problems: %v", s.Problems)
	}
	return s
}

// devsim bootstraps LwM2M clients, with bootstrap PSKs or IDevIDs, in each
// content-format, against a site with an LwM2M profile.
func TestDevsimLwM2M(t *testing.T) {
	env := servertest.Start(t)
	env.Site("lw", "10.22.0.0/24")
	p := &devices.LwM2MProfile{ServerURI: "coaps://lwm2m.example.net", SecurityMode: devices.LwM2MCertificate}
	if err := env.Client.Do(context.Background(), http.MethodPatch, "/api/v1/sites/lw", httpapi.SiteRequest{LwM2M: p}, nil); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--lwm2m-psk"},
		{"--lwm2m-psk", "--lwm2m-format", "senml-cbor"},
		{"--idevid", "--lwm2m-format", "senml-json"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), append([]string{"--mint", "10", "--site", "lw", "--data", env.DataDir, "--json", "--transport", "lwm2m"}, args...), &out, &errOut)
		if err != nil {
			t.Fatalf("devsim %v: %v\n%s", args, err, errOut.String())
		}
		var sum simulator.Summary
		if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.Enrolled != 10 || sum.Failed != 0 || sum.P99 <= 0 {
			t.Errorf("devsim %v: %+v %v\n%s", args, sum, err, out.String())
		}
	}
	var bad bytes.Buffer
	for name, args := range map[string][]string{
		"an unknown format": {"--mint", "1", "--transport", "lwm2m", "--lwm2m-format", "xml"},
		"a soak after it":   {"--mint", "1", "--site", "lw", "--transport", "lwm2m", "--soak", "1s"},
	} {
		if err := run(context.Background(), append(args, "--data", env.DataDir), &bad, &bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
