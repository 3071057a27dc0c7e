package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/provisiond/provisiond/devices/kv"
)

// CreateSite validates and stores a new site.
func (s *Store) CreateSite(ctx context.Context, site Site, ev AuditEvent) (Site, error) {
	if err := site.Validate(); err != nil {
		return Site{}, err
	}
	now := time.Now().UTC()
	site.Version, site.CreatedAt, site.UpdatedAt = 1, now, now
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		raw, err := tx.Get(bucketSites, []byte(site.Name))
		if err != nil {
			return err
		}
		if raw != nil {
			return fmt.Errorf("site %q: %w", site.Name, ErrExists)
		}
		if err := putJSON(tx, bucketSites, []byte(site.Name), site); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
	return site, err
}

func getSite(tx kv.Tx, name string) (Site, error) {
	var site Site
	ok, err := getJSON(tx, bucketSites, []byte(name), &site)
	if err == nil && !ok {
		err = fmt.Errorf("site %q: %w", name, ErrNotFound)
	}
	return site, err
}

// Site returns the named site.
func (s *Store) Site(ctx context.Context, name string) (Site, error) {
	var site Site
	err := s.db.View(ctx, func(tx kv.Tx) (err error) {
		site, err = getSite(tx, name)
		return err
	})
	return site, err
}

// Sites lists all sites by name.
func (s *Store) Sites(ctx context.Context) ([]Site, error) {
	return listJSON[Site](ctx, s, bucketSites)
}

// SiteDeviceCount counts the devices bound to a site.
func (s *Store) SiteDeviceCount(ctx context.Context, name string) (n int, err error) {
	err = s.db.View(ctx, func(tx kv.Tx) (err error) {
		n, err = countKeys(tx, bucketBySite, append([]byte(name), 0), 16)
		return err
	})
	return n, err
}

// UpdateSite applies fn to the stored site, re-validates it and bumps its
// version. The name cannot change, and the address pool cannot change while
// any address of it is leased. The same transaction creates the job that
// gives every enrolled (provisioned or active) device of the site a new
// config version (JobSiteConfig; run it with RunJobChunk): a crash after
// the commit leaves the job to resume, never a site whose devices were not
// told.
func (s *Store) UpdateSite(ctx context.Context, name string, fn func(*Site) error, ev AuditEvent) (Site, Job, error) {
	var site Site
	var job Job
	now := time.Now().UTC()
	err := s.db.Update(ctx, func(tx kv.Tx) error {
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
			n, err := countKeys(tx, bucketLeases, append([]byte(name), 0), 4)
			if err != nil {
				return err
			}
			if n > 0 {
				return fmt.Errorf("change pool of site %q with %d addresses leased: %w", name, n, ErrSiteInUse)
			}
		}
		site.Version = old.Version + 1
		site.UpdatedAt = now
		if err := putJSON(tx, bucketSites, []byte(name), site); err != nil {
			return err
		}
		if job, err = createJob(tx, Job{Kind: JobSiteConfig, Site: name, Event: ev}, now); err != nil {
			return err
		}
		return appendAudit(tx, ev.with("version", fmt.Sprint(site.Version), "job", job.ID))
	})
	return site, job, err
}

// Convergence counts a site's enrolled devices and how many of them reported
// that they applied their current config version (from the index: no
// device record is read).
func (s *Store) Convergence(ctx context.Context, site string) (enrolled, applied int, err error) {
	err = s.db.View(ctx, func(tx kv.Tx) error {
		if applied, err = countIndex(tx, fieldConvergence, convergenceValue(site, convApplied)); err != nil {
			return err
		}
		pending, err := countIndex(tx, fieldConvergence, convergenceValue(site, convPending))
		enrolled = applied + pending
		return err
	})
	return enrolled, applied, err
}

// DeleteSite removes a site no device is bound to.
func (s *Store) DeleteSite(ctx context.Context, name string, ev AuditEvent) error {
	return s.db.Update(ctx, func(tx kv.Tx) error {
		if _, err := getSite(tx, name); err != nil {
			return err
		}
		n, err := countKeys(tx, bucketBySite, append([]byte(name), 0), 16)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("delete site %q bound to %d devices: %w", name, n, ErrSiteInUse)
		}
		if err := tx.Delete(bucketSites, []byte(name)); err != nil {
			return err
		}
		// Stores written before allocation started at per-device offsets
		// kept a cursor per site.
		if err := tx.Delete(bucketPools, []byte(name)); err != nil {
			return err
		}
		return appendAudit(tx, ev)
	})
}
