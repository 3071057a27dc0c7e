package etcdkv_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/devices/kv/kvtest"
	"github.com/provisiond/provisiond/internal/etcdtest"
)

// TestConformance runs the seam's conformance suite against a real etcd,
// each case in a keyspace of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, etcdtest.Options{NoFsync: true})
	cli := cluster.Client(t)
	var n atomic.Int64
	kvtest.Run(t, func(t *testing.T) kv.DB {
		return etcdkv.New(cli, etcdkv.Options{Prefix: fmt.Sprintf("/conformance/%d/", n.Add(1))})
	})
}
