package devices

import "errors"

var (
	// ErrNotFound is returned when a device, site, batch or token does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when creating a site, device or serial that already exists.
	ErrExists = errors.New("already exists")
	// ErrSiteInUse is returned when deleting a site that devices are still bound to.
	ErrSiteInUse = errors.New("site is in use by devices")
	// ErrPoolExhausted is returned when a site's address pool has no free address.
	ErrPoolExhausted = errors.New("address pool exhausted")
	// ErrConflict is returned when a device changed between the read that prepared a
	// write and the write itself (optimistic concurrency); the caller re-reads and decides again.
	ErrConflict = errors.New("device changed concurrently")
	// ErrNoLease is returned when a device has no lease to renew.
	ErrNoLease = errors.New("device holds no lease")
	// ErrInvalid is returned when a record fails validation; the message says which field.
	ErrInvalid = errors.New("invalid")
	// ErrOtherCA is returned by BindCA when the inventory belongs to another CA.
	ErrOtherCA = errors.New("the inventory belongs to another CA")
)
