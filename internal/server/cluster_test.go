package server_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// startReplicas starts n provisiond replicas on one etcd inventory; the
// first makes the cluster's CA and admin token, which the others are given
// (the token file is copied, as an operator would). mod adjusts every
// replica's configuration.
func startReplicas(t *testing.T, store string, n int, mod ...func(*server.Config)) []*servertest.Env {
	t.Helper()
	first := servertest.Start(t, append([]func(*server.Config){func(c *server.Config) { c.Store = store }}, mod...)...)
	envs := []*servertest.Env{first}
	for range n - 1 {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, server.AdminTokenFile), []byte(first.AdminToken()+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		envs = append(envs, servertest.Start(t, append([]func(*server.Config){func(c *server.Config) { c.Store, c.DataDir = store, dir }}, mod...)...))
	}
	return envs
}

// via points a device's flash bundle at one replica.
func via(b wire.Bundle, env *servertest.Env) wire.Bundle {
	b.Endpoints = slices.Clone(env.Info.Endpoints)
	return b
}

func clusterStatus(t *testing.T, env *servertest.Env) httpapi.ClusterStatus {
	t.Helper()
	var st httpapi.ClusterStatus
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/cluster", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// Three replicas on a three-member etcd: a site push and a revocation made
// through A reach the sessions held by B and C (through etcd watch), every
// replica serves the same CRL, one replica leads, and another takes over
// when it stops.
func TestClusterPropagatesChanges(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{Members: 3, NoFsync: true})
	envs := startReplicas(t, etcd.URL()+"/propagation", 3)
	a, b, c := envs[0], envs[1], envs[2]
	a.Site("hq", "10.50.0.0/24")
	bundles := a.Mint(3, "hq")

	// d1 holds an MQTT session on B, d2 on C; d3 enrolls over CoAP on C.
	d1, _ := simulator.NewDevice(via(bundles[0], b))
	d2, _ := simulator.NewDevice(via(bundles[1], c))
	d3, _ := simulator.NewDevice(via(bundles[2], c))
	for _, d := range []*simulator.Device{d1, d2} {
		if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d3.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Fatal(err)
	}
	s1, err := d1.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := d2.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, s := range []*simulator.Session{s1, s2} {
		if cfg, err := s.Config(ctxT(t)); err != nil || cfg.ConfigVersion != 1 {
			t.Fatalf("first config %+v, %v", cfg, err)
		}
	}

	// The membership: three replicas, one leader among them, three
	// healthy etcd members.
	st := clusterStatus(t, b)
	var ids []string
	for _, r := range st.Replicas {
		ids = append(ids, r.ID)
	}
	if len(st.Replicas) != 3 || !slices.Contains(ids, st.Leader) || len(st.Etcd) != 3 {
		t.Fatalf("cluster status %+v", st)
	}
	for _, m := range st.Etcd {
		if !m.Healthy || m.DBSize == 0 {
			t.Fatalf("etcd member %+v", m)
		}
	}

	// A site change through A reaches the devices online on B and C.
	ssid := "Cluster-Wi-Fi"
	start := time.Now()
	if err := a.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{SSID: &ssid}, nil); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*simulator.Session{"B": s1, "C": s2} {
		cfg, err := s.Config(ctxT(t))
		if err != nil || cfg.ConfigVersion != 2 || cfg.WiFi.SSID != ssid {
			t.Fatalf("device on %s got %+v, %v; want version 2", name, cfg, err)
		}
	}
	t.Logf("a site push through A reached sessions on B and C in %v", time.Since(start))

	// A revocation through A cuts d1's session on B and no other.
	start = time.Now()
	var res httpapi.RevokeResponse
	if err := a.Client.Do(ctxT(t), "POST", "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: []string{d1.Bundle.Serial}, Reason: "cluster test"}, &res); err != nil || res.Revoked != 1 {
		t.Fatalf("revoke: %+v %v", res, err)
	}
	waitWithin(t, time.Second, func() bool { return !s1.Client().IsConnectionOpen() }, "d1's MQTT session on B cut")
	t.Logf("d1's session on B was cut %v after the revocation request to A", time.Since(start))
	if !s2.Client().IsConnectionOpen() {
		t.Fatal("d2's session on C was cut too")
	}
	// Refused by every replica.
	for name, env := range map[string]*servertest.Env{"A": a, "B": b, "C": c} {
		again, _ := simulator.NewDevice(via(d1.Bundle, env))
		again.Enrollment, again.Key, again.Chain = d1.Enrollment, d1.Key, d1.Chain
		if _, err := again.ConnectMQTT(ctxT(t), simulator.MQTTOptions{}); err == nil {
			t.Errorf("replica %s let the revoked device connect", name)
		}
	}

	// One CRL for the cluster: the same list, with d1's certificate, on
	// every replica.
	leaf := d1.Chain[0]
	waitFor(t, func() bool {
		crl := a.Server.CRL()
		if !bytes.Equal(crl, b.Server.CRL()) || !bytes.Equal(crl, c.Server.CRL()) {
			return false
		}
		l, err := x509.ParseRevocationList(crl)
		return err == nil && slices.ContainsFunc(l.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool {
			return e.SerialNumber.Cmp(leaf.SerialNumber) == 0
		})
	}, "one CRL with d1's certificate on every replica")

	// The leader stops: another takes over.
	var leader *servertest.Env
	for _, env := range envs {
		if clusterStatus(t, env).Self == st.Leader {
			leader = env
		}
	}
	if err := leader.Server.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	other := a
	if leader == a {
		other = b
	}
	waitFor(t, func() bool {
		st2 := clusterStatus(t, other)
		return st2.Leader != "" && st2.Leader != st.Leader && len(st2.Replicas) == 2
	}, "another replica leads")
}

// A replica does not start beside one of an older inventory layout, which
// could not read the records it writes, nor beside a newer one, whose
// records it could not read; once they are gone it starts, and announces
// its own layout.
func TestClusterRefusesOtherLayouts(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	store := etcd.URL() + "/layouts"
	ctx := ctxT(t)
	db, err := etcdkv.Dial(ctx, store, etcdkv.DialConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// A replica as the version before layouts announced itself.
	key := db.Prefix() + "replicas/older"
	if _, err := db.Client().Put(ctx, key, `{"id":"older","host":"node-7","api":"https://node-7:8443","version":"v0.16.0","started":"2026-11-29T10:00:00Z"}`); err != nil {
		t.Fatal(err)
	}
	cfg := server.Defaults()
	cfg.DataDir, cfg.Store = t.TempDir(), store
	cfg.CoAPSAddr, cfg.HTTPAddr, cfg.MQTTAddr, cfg.AdvertiseHost = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1"
	cfg.CAPassphrase = "test-passphrase-0123456789"
	refused := func(want string) {
		t.Helper()
		srv, err := server.Start(ctx, cfg, servertest.Logger(t))
		if err == nil {
			srv.Shutdown(ctx)
			t.Fatalf("started beside %s", want)
		}
		if !errors.Is(err, server.ErrLayout) || !strings.Contains(err.Error(), want) {
			t.Fatalf("refusal: %v", err)
		}
		t.Log(err)
	}
	refused("node-7")
	newer := fmt.Sprintf(`{"id":"newer","host":"node-9","version":"v9","started":"2026-11-29T10:00:00Z","layout":%d}`, devices.Layout+1)
	if _, err := db.Client().Put(ctx, key, newer); err != nil {
		t.Fatal(err)
	}
	refused("node-9")
	if _, err := db.Client().Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	env := startReplicas(t, store, 1)[0]
	st := clusterStatus(t, env)
	if len(st.Replicas) != 1 || st.Replicas[0].Layout != devices.Layout {
		t.Fatalf("replicas: %+v", st.Replicas)
	}
}

// The throttles count in the shared inventory: five wrong claim tokens for
// one serial, spread over three replicas, block it on all of them (alone,
// each replica would have allowed five).
func TestClusterThrottles(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	envs := startReplicas(t, etcd.URL()+"/throttles", 3)
	envs[0].Site("hq", "10.60.0.0/24")
	b := envs[0].Mint(1, "hq")[0]
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bad, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: b.Serial, ClaimToken: strings.Repeat("B", 32), CSR: csrFor(t, p256)})
	for i := range 5 {
		env := envs[i%3]
		if a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, bad, nil); a.Code != codes.Unauthorized {
			t.Fatalf("attempt %d on replica %d: %v", i+1, i%3, a.Code)
		}
	}
	good, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csrFor(t, p256)})
	for i, env := range envs {
		if a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, good, nil); a.Code != codes.TooManyRequests || a.MaxAge == 0 {
			t.Errorf("replica %d after 5 failures across the cluster: %v (Max-Age %d), want 4.29", i, a.Code, a.MaxAge)
		}
	}
}

// BenchmarkRevocationFanout: devices hold MQTT sessions on replica B; each
// is revoked through replica A, one at a time, and the time until B cuts
// its session is measured (etcd with fsync, one member). docs/performance.md.
func BenchmarkRevocationFanout(b *testing.B) {
	etcd := etcdtest.Start(b, etcdtest.Options{})
	store := etcd.URL() + "/fanout"
	a := servertest.Start(b, func(c *server.Config) { c.Store = store })
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, server.AdminTokenFile), []byte(a.AdminToken()+"\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	rb := servertest.Start(b, func(c *server.Config) { c.Store, c.DataDir = store, dir })
	a.Site("hq", "10.0.0.0/16")
	bundles := a.Mint(b.N, "hq")
	ctx := context.Background()
	sessions := make([]*simulator.Session, b.N)
	for i := range bundles {
		d, _ := simulator.NewDevice(via(bundles[i], rb))
		if _, err := d.EnrollMQTT(ctx, simulator.MQTTOptions{}); err != nil {
			b.Fatal(err)
		}
		s, err := d.ConnectMQTT(ctx, simulator.MQTTOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		sessions[i] = s
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if err := a.Client.Do(ctx, "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{bundles[i].Serial}, Reason: "bench"}, nil); err != nil {
			b.Fatal(err)
		}
		for sessions[i].Client().IsConnectionOpen() {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("device %d's session on B was not cut", i)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// An image uploaded through A reaches a device online on B: the rollout
// made through A pushes the target to B's session, B serves the image,
// which it fetched from A by its digest, and the device's checks pass.
// B's internal image route refuses anyone but a replica.
func TestClusterSharesFirmware(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	envs := startReplicas(t, etcd.URL()+"/firmware", 2)
	a, b := envs[0], envs[1]
	a.Site("hq", "10.90.0.0/24")
	d, _ := simulator.NewDevice(via(a.Mint(1, "hq")[0], b))
	if _, err := d.EnrollMQTT(ctxT(t), simulator.MQTTOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := d.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, err := s.Config(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}

	img := make([]byte, 200_000)
	rand.Read(img)
	added := a.AddFirmware("TEST", "2.0.0", img)
	if err := a.Client.Do(ctxT(t), "PUT", "/api/v1/firmware/rollouts",
		httpapi.RolloutRequest{Model: "TEST", Site: "hq", Version: "2.0.0", Percent: 100}, nil); err != nil {
		t.Fatal(err)
	}
	var cfg wire.DeviceConfig
	for cfg.ConfigVersion <= first.ConfigVersion || cfg.Firmware == nil {
		if cfg, err = s.Config(ctxT(t)); err != nil {
			t.Fatalf("no config with the firmware target reached the device on B: %v", err)
		}
	}
	if !strings.Contains(cfg.Firmware.URIs[0], b.Server.HTTPAddr().String()) && !strings.Contains(strings.Join(cfg.Firmware.URIs, " "), portOf(b.Server.HTTPAddr().String())) {
		t.Fatalf("the target points at %v, not at replica B", cfg.Firmware.URIs)
	}
	m, err := d.UpdateFirmware(ctxT(t), cfg.Firmware, simulator.FirmwareOptions{})
	if err != nil || m.Version != "2.0.0" || m.SHA256 != added.Manifest.SHA256 {
		t.Fatalf("update from B: %+v %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(b.DataDir, server.FirmwareDir, "images", added.Manifest.SHA256)); err != nil {
		t.Fatalf("B keeps no copy of the image: %v", err)
	}
	var list httpapi.FirmwareView
	if err := b.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &list); err != nil || len(list.Images) != 1 {
		t.Fatalf("B lists %d images (%v)", len(list.Images), err)
	}
	// Only a replica may fetch from the internal route: not a token holder
	// (no client certificate), not a device.
	var raw []byte
	err = b.Client.Do(ctxT(t), "GET", "/internal/v1/images/"+added.Manifest.SHA256, nil, &raw)
	var apiErr *httpapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 403 {
		t.Fatalf("internal image route without a replica certificate: %v", err)
	}
}

func portOf(hostport string) string {
	_, p, _ := strings.Cut(hostport, ":")
	return ":" + p
}

// When etcd loses quorum, bootstrap answers 5.03 "unavailable" with a retry
// hint within the request bound, the API 503 with Retry-After, and nothing
// is half-written: once quorum is back the same device enrolls.
func TestQuorumLossAnswersUnavailable(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	etcd := etcdtest.Start(t, etcdtest.Options{Members: 3, NoFsync: true})
	env := servertest.Start(t, func(c *server.Config) { c.Store = etcd.URL() + "/quorum" })
	env.Site("hq", "10.110.0.0/24")
	b := env.Mint(1, "hq")[0]
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csrFor(t, p256)})
	ms := etcd.Members()
	etcd.Kill(ms[1])
	etcd.Kill(ms[2])
	start := time.Now()
	a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, req, nil)
	var e wire.Error
	_ = wire.Unmarshal(wire.CBOR, a.Body, &e)
	if a.Code != codes.ServiceUnavailable || e.Code != "unavailable" || a.MaxAge != 15 {
		t.Fatalf("enroll without quorum: %v %+v Max-Age %d, want 5.03 unavailable with Max-Age 15", a.Code, e, a.MaxAge)
	}
	t.Logf("5.03 after %v", time.Since(start))
	err := env.Client.Do(ctxT(t), "GET", "/api/v1/sites", nil, nil)
	var apiErr *httpapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 503 || apiErr.Code != "unavailable" {
		t.Fatalf("API without quorum: %v", err)
	}
	etcd.Restart(ms[1])
	etcd.Restart(ms[2])
	etcd.WaitHealthy()
	waitFor(t, func() bool {
		a = rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, req, nil)
		return a.Code == codes.Created
	}, "the enrollment once quorum is back")
	list, _, err := env.Server.Store().Devices(ctxT(t), devices.Filter{State: devices.StateProvisioned})
	if err != nil || len(list) != 1 || list[0].Lease == nil {
		t.Fatalf("after quorum came back: %d provisioned (%v)", len(list), err)
	}
}
