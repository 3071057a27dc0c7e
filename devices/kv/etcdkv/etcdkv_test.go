package etcdkv_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		in, endpoints, prefix string
		tls                   bool
		bad                   bool
	}{
		{in: "etcd://a:2379", endpoints: "http://a:2379", prefix: "/provisiond/"},
		{in: "etcd://a:2379,b:2379,c:2379", endpoints: "http://a:2379 http://b:2379 http://c:2379", prefix: "/provisiond/"},
		{in: "etcds://10.0.0.1:2379/fleet-eu", endpoints: "https://10.0.0.1:2379", prefix: "/fleet-eu/", tls: true},
		{in: "etcd://[::1]:2379/a/b/", endpoints: "http://[::1]:2379", prefix: "/a/b/"},
		{in: "http://a:2379", bad: true},
		{in: "etcd://a", bad: true},
		{in: "etcd://a:2379,", bad: true},
		{in: "etcd://user:pw@a:2379", bad: true},
		{in: "etcd://a:2379?x=1", bad: true},
	} {
		t.Run(c.in, func(t *testing.T) {
			got, err := etcdkv.ParseURL(c.in)
			if c.bad {
				if !errors.Is(err, etcdkv.ErrBadURL) {
					t.Fatalf("got %+v, %v; want ErrBadURL", got, err)
				}
				return
			}
			if err != nil || strings.Join(got.Endpoints, " ") != c.endpoints || got.Prefix != c.prefix || got.TLS != c.tls {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
}

func TestDialFailsFastWithoutEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := etcdkv.Dial(ctx, "etcd://127.0.0.1:1", etcdkv.DialConfig{})
	if err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
}
