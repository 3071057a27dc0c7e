// Package devices is provisiond's inventory: device records and their lifecycle
// state, sites (Wi-Fi and network profiles with an IPv4 address pool), IP
// leases, factory batches, API tokens and the audit log.
//
// # Basics
//
// [Open] opens (or creates) a bbolt file and returns a [*Store]. Every
// mutation is one bbolt transaction that also appends its audit event, so a
// crash leaves either the whole change or none of it. Enrollment commits go
// through [Store.Provision], which allocates the lease, writes the device and
// its audit event together and uses bbolt's batching so that concurrent
// enrollments share fsyncs.
//
// Records are JSON inside bbolt buckets:
//
//	devices   device UUID      -> Device
//	serials   serial           -> device UUID
//	bysite    site\x00UUID      -> ""            (devices bound to a site)
//	sites     site name        -> Site
//	leases    site\x00IPv4(4B)  -> Lease          (one key per address: no double allocation)
//	pools     site name        -> next offset   (allocation cursor)
//	batches   batch ID         -> Batch
//	tokens    sha256(token)    -> Token
//	audit     sequence (8B BE) -> AuditEvent
//	index     field, value, UUID -> ""         (state, model, firmware, batch; see Store.Devices)
//
// # Caveats
//
// Pools are IPv4 only. The lifecycle rules (who may move a device from one
// state to another) belong to package enroll; this package stores what it is
// told, checking only invariants that must hold whatever the caller: unique
// serials, one device per address, no site deleted while devices use it.
package devices
