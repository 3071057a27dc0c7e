package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestClusterSurvivesKills: three etcd members and three provisiond
// processes on loopback; a mixed CoAP/MQTT boot storm spread over the
// replicas while the etcd leader and one replica are SIGKILLed and
// restarted. Afterwards every device is enrolled exactly once with the
// certificate it holds, no address is held twice, the audit chains verify,
// every replica serves the same CRL and the same OCSP answers, and a device
// revoked through replica A is refused by B and C and cut from its MQTT
// session on B.
func TestClusterSurvivesKills(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd and provisiond processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	etcd := etcdtest.Start(t, etcdtest.Options{Members: 3})
	a := newProcess(t, "--store", etcd.URL())
	a.start()
	defer a.stop(syscall.SIGKILL)
	token, err := os.ReadFile(filepath.Join(a.data, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	replicas := []*process{a}
	for range 2 {
		p := a.sibling()
		if err := os.MkdirAll(p.data, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.data, server.AdminTokenFile), token, 0o600); err != nil {
			t.Fatal(err)
		}
		p.start()
		defer p.stop(syscall.SIGKILL)
		replicas = append(replicas, p)
	}
	b, c := replicas[1], replicas[2]

	ca := a.client()
	name, ssid, sec, pass, cidr := "hq", "hq", "wpa2-psk", "hq-passphrase", "10.80.0.0/22"
	if err := ca.Do(ctx, "POST", "/api/v1/sites", httpapi.SiteRequest{Name: &name, SSID: &ssid, Security: &sec, Passphrase: &pass, CIDR: &cidr}, nil); err != nil {
		t.Fatal(err)
	}
	const n = 240
	m, err := ca.Mint(ctx, "CLUSTER", n, "hq")
	if err != nil {
		t.Fatal(err)
	}
	for i := range m.Bundles { // a third of the fleet on each replica
		m.Bundles[i].Endpoints = replicas[i%3].endpoints()
	}

	type result struct {
		outs []simulator.Outcome
		sum  simulator.Summary
	}
	done := make(chan result, 1)
	go func() {
		outs, sum := simulator.Run(ctx, m.Bundles, simulator.RunOptions{Transport: "mix", Concurrency: 24,
			Attempts: 40, Timeout: 4 * time.Second, MaxWait: time.Second})
		done <- result{outs, sum}
	}()
	// The etcd leader dies and comes back; so does replica C.
	time.Sleep(700 * time.Millisecond)
	leader := etcd.Leader(t)
	etcd.Kill(leader)
	c.stop(syscall.SIGKILL)
	t.Logf("killed etcd member %s (the leader) and replica C", leader.Name)
	time.Sleep(2 * time.Second)
	etcd.Restart(leader)
	c.start()
	res := <-done
	t.Logf("storm: %d of %d enrolled in %v, %d attempts, retried %v", res.sum.Enrolled, n, res.sum.Duration, res.sum.Attempts, res.sum.Retries)
	if res.sum.Enrolled != n {
		t.Fatalf("%d of %d enrolled: %v", res.sum.Enrolled, n, res.sum.Reasons)
	}

	// The inventory, read straight from etcd.
	s, err := devices.New(ctx, etcdkv.New(etcd.Client(t), etcdkv.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	var sessionDev *simulator.Device
	for _, o := range res.outs {
		d, err := s.DeviceBySerial(ctx, o.Serial)
		if err != nil {
			t.Fatal(err)
		}
		held := o.Device.Chain[0]
		if want := held.SerialNumber.Text(16); d.CertSerial != want {
			t.Errorf("%s: the inventory holds certificate %s, the device holds %s", o.Serial, d.CertSerial, want)
		}
		if d.State != devices.StateProvisioned || d.Lease == nil {
			t.Errorf("%s: state %s, lease %v", o.Serial, d.State, d.Lease)
			continue
		}
		if prev, dup := addrs[d.Lease.Addr.String()]; dup {
			t.Errorf("address %s held by %s and %s", d.Lease.Addr, prev, o.Serial)
		}
		addrs[d.Lease.Addr.String()] = o.Serial
		hist, err := s.History(ctx, o.Serial, 50)
		if err != nil {
			t.Fatal(err)
		}
		enrolls := 0
		for _, ev := range hist {
			if ev.Action == "device.enroll" {
				enrolls++
			}
		}
		if enrolls != 1 {
			t.Errorf("%s: %d enrollment events, want exactly 1", o.Serial, enrolls)
		}
		if sessionDev == nil && slices.Equal(o.Device.Bundle.Endpoints, b.endpoints()) {
			sessionDev = o.Device
		}
	}
	if inUse, err := s.LeasesInUse(ctx, "hq", time.Now()); err != nil || inUse != n {
		t.Errorf("leases in use: %d (%v), want %d", inUse, err, n)
	}
	if _, err := s.VerifyAudit(ctx); err != nil {
		t.Errorf("audit: %v", err)
	}
	if problems, err := s.Verify(ctx); err != nil || len(problems) > 0 {
		t.Errorf("inventory: %v %v", problems, err)
	}

	// A device with an MQTT session on B is revoked through A.
	session, err := sessionDev.ConnectMQTT(ctx, simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	start := time.Now()
	if err := ca.Do(ctx, "POST", "/api/v1/revocations", httpapi.RevokeRequest{Devices: []string{sessionDev.Bundle.Serial}, Reason: "cluster"}, nil); err != nil {
		t.Fatal(err)
	}
	for session.Client().IsConnectionOpen() {
		if time.Since(start) > 5*time.Second {
			t.Fatal("the revoked device's session on B was not cut")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("session on B cut %v after the revocation through A", time.Since(start))
	for _, p := range []*process{b, c} {
		bundle := sessionDev.Bundle
		bundle.Endpoints = p.endpoints()
		again, _ := simulator.NewDevice(bundle)
		again.Enrollment, again.Key, again.Chain = sessionDev.Enrollment, sessionDev.Key, sessionDev.Chain
		if _, err := again.ConnectMQTT(ctx, simulator.MQTTOptions{}); err == nil {
			t.Errorf("replica %s let the revoked device connect", p.mqtts)
		}
	}
	// One CRL and the same OCSP answers on every replica.
	revoked, good := sessionDev.Chain[0], res.outs[0].Device.Chain[0] // outs[0] enrolled through A
	if good.SerialNumber.Cmp(revoked.SerialNumber) == 0 {
		t.Fatal("the good certificate is the revoked one")
	}
	issuer := sessionDev.Chain[1]
	deadline := time.Now().Add(10 * time.Second)
	for {
		var crls [][]byte
		for _, p := range replicas {
			var der []byte
			if err := p.client().Do(ctx, "GET", "/api/v1/crl", nil, &der); err != nil {
				t.Fatal(err)
			}
			crls = append(crls, der)
		}
		l, err := x509.ParseRevocationList(crls[0])
		same := err == nil && bytes.Equal(crls[0], crls[1]) && bytes.Equal(crls[0], crls[2]) &&
			slices.ContainsFunc(l.RevokedCertificateEntries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(revoked.SerialNumber) == 0 })
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replicas do not serve one CRL listing the revoked certificate")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range replicas {
		for cert, want := range map[*x509.Certificate]int{revoked: ocsp.Revoked, good: ocsp.Good} {
			req, err := ocsp.CreateRequest(cert, issuer, nil)
			if err != nil {
				t.Fatal(err)
			}
			var der []byte
			if err := p.client().DoRaw(ctx, "POST", "/ocsp", "application/ocsp-request", bytes.NewReader(req), &der); err != nil {
				t.Fatal(err)
			}
			resp, err := ocsp.ParseResponseForCert(der, cert, issuer)
			if err != nil || resp.Status != want {
				t.Errorf("replica %s: OCSP for %x: status %v (%v), want %d", p.https, cert.SerialNumber, statusOf(resp), err, want)
			}
		}
	}
}

func statusOf(r *ocsp.Response) any {
	if r == nil {
		return nil
	}
	return r.Status
}
