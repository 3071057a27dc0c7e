package main

import (
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
)

// provctl cluster status shows the replicas, the elected one and etcd; on
// a single node it says there is no cluster.
func TestClusterStatus(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	env := servertest.Start(t, func(c *server.Config) { c.Store = etcd.URL() })
	var out string
	waitLeader := func() bool {
		var err error
		out, err = provctl(t, env.DataDir, "cluster", "status")
		if err != nil {
			t.Fatalf("cluster status: %v\n%s", err, out)
		}
		return strings.Contains(out, "leader\n")
	}
	for range 100 {
		if waitLeader() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{"replicas: 1", "  leader\n", "etcd: 1 members", "m0 ", "healthy", "MiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("cluster status lacks %q:\n%s", want, out)
		}
	}
	if out, err := provctl(t, env.DataDir, "-o", "json", "cluster", "status"); err != nil || !strings.Contains(out, `"db_size_bytes"`) {
		t.Errorf("cluster status -o json: %v\n%s", err, out)
	}

	alone := servertest.Start(t)
	if out, err := provctl(t, alone.DataDir, "cluster", "status"); err == nil || !strings.Contains(err.Error()+out, "not a cluster") {
		t.Errorf("cluster status on a single node: %v\n%s", err, out)
	}
}
