// Package devices is provisiond's inventory: device records and their lifecycle
// state, sites (Wi-Fi and network profiles with an IPv4 address pool), IP
// leases, factory batches, API tokens and the audit log.
//
// # Basics
//
// [New] opens the inventory held by a storage engine (package kv; boltkv is
// the embedded bbolt file) and returns a [*Store]. Every mutation is one
// transaction that also appends its audit event, so a crash leaves either
// the whole change or none of it. Every method that reaches the engine takes
// a context. Enrollment commits go through [Store.Provision], which
// allocates the lease, writes the device and its audit event together; on
// an engine that batches (bbolt), concurrent enrollments share commits.
//
// The inventory is written once against the seam; records are JSON in
// buckets of ordered keys:
//
//	devices    device UUID      -> Device
//	serials    serial           -> device UUID
//	bysite     site\x00UUID      -> ""            (devices bound to a site)
//	sites      site name        -> Site
//	leases     site\x00IPv4(4B)  -> Lease          (one key per address: no double allocation)
//	batches    batch ID         -> Batch
//	tokens     sha256(token)    -> Token
//	auditlog   time|chain|seq   -> AuditEvent     (256 hash chains; see AuditChains)
//	audithead  chain            -> the chain's newest event
//	history    target\x00 auditlog key -> ""     (a device's or site's events)
//	index      field, value, UUID -> ""         (state, model, firmware, batch; see Store.Devices)
//	certs      certificate serial -> device UUID
//	revoked    certificate serial -> RevokedCert
//
// No key is written by every write transaction (the audit log is chained
// per target, lease allocation starts at a per-device offset), so
// concurrent enrollments do not conflict on an optimistic engine.
//
// # Caveats
//
// Pools are IPv4 only. The lifecycle rules (who may move a device from one
// state to another) belong to package enroll; this package stores what it is
// told, checking only invariants that must hold whatever the caller: unique
// serials, one device per address, no site deleted while devices use it.
package devices
