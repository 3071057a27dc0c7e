package server_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/testtools"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestNginxInFront runs docs/nginx/nginx.conf (Debian's nginx with its
// stream module) in front of three replicas: devices enroll through it over
// DTLS and MQTT, a device's mutual-DTLS session keeps working through it,
// the API answers through it, and because the replicas are told nginx's
// address (--lb-addrs), failed attempts from many devices behind it do not
// block the others by source address.
func TestNginxInFront(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	nginx := testtools.Need(t, "nginx")
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	if _, err := os.Stat(module); err != nil {
		if testtools.Required() {
			t.Fatalf("nginx's stream module is missing (%v): make test installs libnginx-mod-stream", err)
		}
		t.Skip("libnginx-mod-stream is not installed")
	}
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	lb := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	envs := startReplicas(t, etcd.URL()+"/nginx", 3, func(c *server.Config) { c.Enroll.LBAddrs = lb })
	first := envs[0]

	raw, err := os.ReadFile("../../docs/nginx/nginx.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(raw)
	for i, env := range envs {
		old := fmt.Sprintf("10.0.0.1%d", i+1)
		conf = strings.ReplaceAll(conf, old+":5684", env.CoAPS())
		conf = strings.ReplaceAll(conf, old+":8883", env.Server.MQTTAddr())
		conf = strings.ReplaceAll(conf, old+":8443", env.Server.HTTPAddr().String())
	}
	coaps, mqtts, https := testtools.FreeAddr(t, "udp"), testtools.FreeAddr(t, "tcp"), testtools.FreeAddr(t, "tcp")
	conf = strings.Replace(conf, "listen 5684 udp reuseport;", "listen "+coaps+" udp reuseport;", 1)
	conf = strings.Replace(conf, "listen 8883;", "listen "+mqtts+";", 1)
	conf = strings.Replace(conf, "listen 8443;", "listen "+https+";", 1)
	if strings.Contains(conf, "10.0.0.1") || strings.Contains(conf, " 5684 ") || strings.Contains(conf, "listen 8") {
		t.Fatal("an upstream address of the example was not replaced")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"),
		"-g", "daemon off; pid "+filepath.Join(dir, "nginx.pid")+";")
	out, _ := os.Create(filepath.Join(dir, "out.log"))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	client, err := httpapi.NewClient("https://"+https, first.AdminToken(), first.Server.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := client.Info(context.Background()); return err == nil }, "the API through nginx")

	first.Site("hq", "10.100.0.0/24")
	bundles := first.Mint(31, "hq")
	for i := range bundles {
		bundles[i].Endpoints = []string{"coaps://" + coaps, "mqtts://" + mqtts}
	}
	// 21 failed attempts from behind nginx (unknown serials): past the
	// per-source limit of 20, were nginx's address counted as one source.
	for i := range 21 {
		bad := bundles[0]
		bad.Serial = fmt.Sprintf("NOPE-%02d", i)
		d, _ := simulator.NewDevice(bad)
		if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); simulator.Reason(err) != "unauthorized" {
			t.Fatalf("bogus attempt %d through nginx: %v", i, err)
		}
	}
	outs, sum := simulator.Run(ctxT(t), bundles[:30], simulator.RunOptions{Transport: "mix", Concurrency: 8})
	if sum.Enrolled != 30 {
		t.Fatalf("through nginx: %+v", sum)
	}
	// A mutual-DTLS session through nginx: the same replica sees every datagram.
	if _, err := outs[0].Device.RenewLease(ctxT(t), simulator.EnrollOptions{}); err != nil {
		t.Errorf("lease renewal over mutual DTLS through nginx: %v", err)
	}
	s, err := outs[1].Device.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatalf("MQTT through nginx: %v", err)
	}
	s.Close()
}
