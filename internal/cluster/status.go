package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Status is the cluster as `provctl cluster status` shows it.
type Status struct {
	Replicas []Replica `json:"replicas"`
	Leader   string    `json:"leader"` // replica ID; empty while none is elected
	Self     string    `json:"self"`   // the replica that answered
	Etcd     []Member  `json:"etcd"`
	// Keys is how many keys the inventory has in etcd (its prefix).
	Keys int64 `json:"keys"`
}

// Member is one etcd member's health as the answering replica sees it.
type Member struct {
	Name        string `json:"name"`
	Endpoint    string `json:"endpoint"`
	Healthy     bool   `json:"healthy"`
	Leader      bool   `json:"leader"`
	Version     string `json:"version,omitempty"`
	DBSize      int64  `json:"db_size_bytes,omitempty"`
	DBSizeInUse int64  `json:"db_size_in_use_bytes,omitempty"`
	RaftIndex   uint64 `json:"raft_index,omitempty"`
	Error       string `json:"error,omitempty"`
}

// Replicas lists the replicas registered now (this one included).
func (n *Node) Replicas(ctx context.Context) ([]Replica, error) {
	return ListReplicas(ctx, n.cli, n.cfg.Prefix)
}

// ListReplicas lists the replicas registered now in the cluster whose keys
// are under prefix, without joining it.
func ListReplicas(ctx context.Context, cli *clientv3.Client, prefix string) ([]Replica, error) {
	resp, err := cli.Get(ctx, prefix+"replicas/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster replicas: %w", err)
	}
	var out []Replica
	for _, kv := range resp.Kvs {
		var r Replica
		if json.Unmarshal(kv.Value, &r) == nil {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// Status reads the membership, the leader and every etcd member's status.
func (n *Node) Status(ctx context.Context) (Status, error) {
	st := Status{Self: n.cfg.Self.ID}
	var err error
	if st.Replicas, err = n.Replicas(ctx); err != nil {
		return st, err
	}
	if s, err := n.session(ctx); err == nil {
		if l, err := concurrency.NewElection(s, n.cfg.Prefix+"leader/").Leader(ctx); err == nil && len(l.Kvs) > 0 {
			st.Leader = string(l.Kvs[0].Value)
		}
	}
	if c, err := n.cli.Get(ctx, n.cfg.Prefix+"b/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err == nil {
		st.Keys = c.Count
	}
	members, err := n.cli.MemberList(ctx)
	if err != nil {
		return st, fmt.Errorf("cluster status: etcd members: %w", err)
	}
	for _, m := range members.Members {
		mb := Member{Name: m.Name, Endpoint: strings.Join(m.ClientURLs, ",")}
		if len(m.ClientURLs) == 0 {
			mb.Error = "not started"
			st.Etcd = append(st.Etcd, mb)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := n.cli.Status(sctx, m.ClientURLs[0])
		cancel()
		if err != nil {
			mb.Error = err.Error()
		} else {
			mb.Healthy = len(s.Errors) == 0
			mb.Leader = s.Leader == s.Header.MemberId
			mb.Version, mb.DBSize, mb.DBSizeInUse, mb.RaftIndex = s.Version, s.DbSize, s.DbSizeInUse, s.RaftIndex
			if len(s.Errors) > 0 {
				mb.Error = strings.Join(s.Errors, "; ")
			}
		}
		st.Etcd = append(st.Etcd, mb)
	}
	return st, nil
}
