package server_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// A fleet online over MQTT: every device acknowledges the config it gets at
// connect and each push, renews its lease and certificate on schedule
// (reconnecting with the new certificate), and is cut off when revoked.
func TestSoakFleet(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.30.0.0/24")
	outs, sum := simulator.Run(ctxT(t), env.Mint(20, "hq"), simulator.RunOptions{Concurrency: 10, Transport: "mix"})
	if sum.Enrolled != 20 {
		t.Fatalf("enrollment: %v", sum)
	}
	var devs []*simulator.Device
	for _, o := range outs {
		devs = append(devs, o.Device)
	}
	fleet, err := simulator.GoOnline(ctxT(t), devs, simulator.SoakOptions{Broker: env.MQTTS(),
		LeaseEvery: 300 * time.Millisecond, CertEvery: 700 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	time.Sleep(1500 * time.Millisecond) // a few renewals of each kind

	// A site-wide push reaches every device, which applies and acknowledges it.
	before := fleet.Versions()
	ssid := "hq-new"
	t0 := time.Now()
	var site httpapi.SiteView
	if err := env.Client.Do(ctxT(t), "PATCH", "/api/v1/sites/hq", httpapi.SiteRequest{SSID: &ssid}, &site); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lat, err := fleet.WaitConfig(ctx, before, t0)
	if err != nil || len(lat) != 20 {
		t.Fatalf("push reached %d of 20: %v; offline: %v", len(lat), err, fleet.Stats().Offline)
	}
	t.Logf("push: slowest device after %v", slices.Max(lat))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := env.Client.Do(ctxT(t), "GET", "/api/v1/sites/hq", nil, &site); err != nil {
			t.Fatal(err)
		}
		if site.ConfigApplied == 20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if site.Enrolled != 20 || site.ConfigApplied != 20 {
		t.Fatalf("site convergence %d/%d, want 20/20 acknowledged", site.ConfigApplied, site.Enrolled)
	}

	// Revocation cuts exactly the revoked devices off.
	ids := fleet.DeviceIDs()[:3]
	t0 = time.Now()
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: ids, Reason: "soak test"}, nil); err != nil {
		t.Fatal(err)
	}
	cut, err := fleet.WaitCut(ctx, ids, t0)
	if err != nil || len(cut) != 3 {
		t.Fatalf("cut %d of 3: %v", len(cut), err)
	}
	t.Logf("revocation: slowest cut after %v", slices.Max(cut))

	st := fleet.Stats()
	if st.Online != 17 {
		t.Errorf("online after revoking 3 of 20: %d", st.Online)
	}
	if st.Acks < 40 || st.LeaseRenewals < 20 || st.CertRenewals < 20 {
		t.Errorf("too little happened: %+v", st)
	}
	if st.AckErrors+st.LeaseErrors+st.CertRenewalError > 0 {
		t.Errorf("errors while online: %+v", st)
	}
}
