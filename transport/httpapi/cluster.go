package httpapi

import "time"

// ClusterStatus is GET /api/v1/cluster: the replicas sharing the
// inventory, the one elected for the cluster-wide work, and etcd.
type ClusterStatus struct {
	Self     string           `json:"self"`   // the replica that answered
	Leader   string           `json:"leader"` // empty while none is elected
	Replicas []ClusterReplica `json:"replicas"`
	Etcd     []EtcdMember     `json:"etcd"`
	Keys     int64            `json:"keys"` // the inventory's keys in etcd
}

// ClusterReplica is one provisiond replica.
type ClusterReplica struct {
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	API     string    `json:"api"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	Layout  int       `json:"layout,omitempty"` // the inventory layout it reads and writes
}

// EtcdMember is one etcd member as the answering replica sees it.
type EtcdMember struct {
	Name        string `json:"name"`
	Endpoint    string `json:"endpoint"`
	Healthy     bool   `json:"healthy"`
	Leader      bool   `json:"leader"`
	Version     string `json:"version,omitempty"`
	DBSize      int64  `json:"db_size_bytes"`
	DBSizeInUse int64  `json:"db_size_in_use_bytes"`
	Error       string `json:"error,omitempty"`
}
