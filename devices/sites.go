package devices

import (
	"bytes"
	"fmt"
	"time"

	"github.com/google/uuid"
	bolt "go.etcd.io/bbolt"
)

// CreateSite validates and stores a new site.
func (s *Store) CreateSite(site Site, ev AuditEvent) (Site, error) {
	if err := site.Validate(); err != nil {
		return Site{}, err
	}
	now := time.Now().UTC()
	site.Version, site.CreatedAt, site.UpdatedAt = 1, now, now
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSites)
		if b.Get([]byte(site.Name)) != nil {
			return fmt.Errorf("site %q: %w", site.Name, ErrExists)
		}
		if err := putJSON(b, []byte(site.Name), site); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	return site, err
}

func getSite(tx *bolt.Tx, name string) (Site, error) {
	var site Site
	ok, err := getJSON(tx.Bucket(bucketSites), []byte(name), &site)
	if err == nil && !ok {
		err = fmt.Errorf("site %q: %w", name, ErrNotFound)
	}
	return site, err
}

// Site returns the named site.
func (s *Store) Site(name string) (Site, error) {
	var site Site
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		site, err = getSite(tx, name)
		return err
	})
	return site, err
}

// Sites lists all sites by name.
func (s *Store) Sites() ([]Site, error) { return listJSON[Site](s, bucketSites) }

// SiteDeviceCount counts the devices bound to a site.
func (s *Store) SiteDeviceCount(name string) (n int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		n = countPrefix(tx.Bucket(bucketBySite), append([]byte(name), 0))
		return nil
	})
	return n, err
}

func countPrefix(b *bolt.Bucket, prefix []byte) int {
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	return n
}

// UpdateSite applies fn to the stored site, re-validates it and bumps its
// version. The name cannot change, and the address pool cannot change while
// any address of it is leased. Every enrolled (provisioned or active) device
// of the site gets a new config version in the same transaction; their IDs
// are returned so that the new config can be pushed to them.
func (s *Store) UpdateSite(name string, fn func(*Site) error, ev AuditEvent) (Site, []uuid.UUID, error) {
	var site Site
	var affected []uuid.UUID
	err := s.db.Update(func(tx *bolt.Tx) error {
		affected = affected[:0]
		old, err := getSite(tx, name)
		if err != nil {
			return err
		}
		site = old
		if err := fn(&site); err != nil {
			return err
		}
		site.Name = old.Name
		if err := site.Validate(); err != nil {
			return err
		}
		if site.CIDR != old.CIDR || site.Gateway != old.Gateway {
			if n := countPrefix(tx.Bucket(bucketLeases), append([]byte(name), 0)); n > 0 {
				return fmt.Errorf("change pool of site %q with %d addresses leased: %w", name, n, ErrSiteInUse)
			}
		}
		site.Version = old.Version + 1
		site.UpdatedAt = time.Now().UTC()
		if err := putJSON(tx.Bucket(bucketSites), []byte(name), site); err != nil {
			return err
		}
		err = forEachSiteDevice(tx, name, func(d Device) error {
			if d.State != StateProvisioned && d.State != StateActive {
				return nil
			}
			old := d
			d.ConfigVersion++
			d.Rev++
			d.UpdatedAt = site.UpdatedAt
			if err := putDevice(tx, &old, &d); err != nil {
				return err
			}
			affected = append(affected, d.ID)
			return nil
		})
		if err != nil {
			return err
		}
		if ev.Detail == nil {
			ev.Detail = map[string]string{}
		}
		ev.Detail["version"] = fmt.Sprint(site.Version)
		ev.Detail["devices_reconfigured"] = fmt.Sprint(len(affected))
		return appendAudit(tx, ev)
	})
	return site, affected, err
}

// Convergence counts a site's enrolled devices and how many of them reported
// that they applied their current config version (from the index: no
// device record is read).
func (s *Store) Convergence(site string) (enrolled, applied int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		applied = countIndex(tx, fieldConvergence, convergenceValue(site, convApplied))
		enrolled = applied + countIndex(tx, fieldConvergence, convergenceValue(site, convPending))
		return nil
	})
	return enrolled, applied, err
}

// DeleteSite removes a site no device is bound to.
func (s *Store) DeleteSite(name string, ev AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if _, err := getSite(tx, name); err != nil {
			return err
		}
		if n := countPrefix(tx.Bucket(bucketBySite), append([]byte(name), 0)); n > 0 {
			return fmt.Errorf("delete site %q bound to %d devices: %w", name, n, ErrSiteInUse)
		}
		if err := tx.Bucket(bucketSites).Delete([]byte(name)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketPools).Delete([]byte(name)); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}

// forEachSiteDevice calls fn with every device bound to a site (through the
// bysite index).
func forEachSiteDevice(tx *bolt.Tx, site string, fn func(Device) error) error {
	prefix := append([]byte(site), 0)
	c := tx.Bucket(bucketBySite).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		d, err := getDevice(tx, uuid.UUID(k[len(prefix):]))
		if err != nil {
			return err
		}
		if err := fn(d); err != nil {
			return err
		}
	}
	return nil
}
