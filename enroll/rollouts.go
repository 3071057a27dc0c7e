package enroll

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/firmware"
)

// Images is what firmware targets need of the catalogue: whether it holds
// a version of a model.
type Images interface {
	Has(model, version string) error
}

// RolloutStore is the part of the inventory that firmware targets change.
type RolloutStore interface {
	Rollouts(ctx context.Context) ([]devices.Rollout, error)
	ChangeRollout(ctx context.Context, model, site string, decide func(old *devices.Rollout) (devices.Rollout, error), ev devices.AuditEvent) (devices.Rollout, error)
	Device(ctx context.Context, id uuid.UUID) (devices.Device, error)
	UpdateDevice(ctx context.Context, id uuid.UUID, fn func(d *devices.Device) (*devices.AuditEvent, error)) (devices.Device, error)
}

// Rollouts runs the changes to firmware targets: rollouts per model and
// site, and per-device pins. Each change and its audit event are one
// inventory transaction; then the devices it retargets get a new config
// version, pushed (a retarget job).
type Rollouts struct {
	store  RolloutStore
	images Images
	fleet  *Fleet
}

// NewRollouts returns the firmware-target workflows.
func NewRollouts(store RolloutStore, images Images, fleet *Fleet) *Rollouts {
	return &Rollouts{store: store, images: images, fleet: fleet}
}

func rolloutTarget(model, site string) string {
	if site == "" {
		return model + "@*"
	}
	return model + "@" + site
}

// List returns every rollout.
func (x *Rollouts) List(ctx context.Context) ([]devices.Rollout, error) { return x.store.Rollouts(ctx) }

// Set targets version of model at site ("" for every site) to percent of
// its devices (firmware.NextRollout's rules) and pushes the new targets.
func (x *Rollouts) Set(ctx context.Context, a Actor, model, site, version string, percent int) (devices.Rollout, error) {
	if site != "" && !a.CanSite(site) {
		return devices.Rollout{}, fmt.Errorf("%w: site %s", ErrForbidden, site)
	}
	if err := x.images.Has(model, version); err != nil {
		return devices.Rollout{}, err
	}
	r, err := x.store.ChangeRollout(ctx, model, site, func(old *devices.Rollout) (devices.Rollout, error) {
		return firmware.NextRollout(old, model, site, version, percent, time.Now())
	}, a.event("firmware.rollout", rolloutTarget(model, site), nil))
	if err != nil {
		return devices.Rollout{}, err
	}
	x.push(ctx, a, model, site)
	return r, nil
}

// SetState pauses, resumes or aborts a rollout and pushes the new targets.
func (x *Rollouts) SetState(ctx context.Context, a Actor, model, site, state string) (devices.Rollout, error) {
	if site != "" && !a.CanSite(site) {
		return devices.Rollout{}, fmt.Errorf("%w: site %s", ErrForbidden, site)
	}
	r, err := x.store.ChangeRollout(ctx, model, site, func(old *devices.Rollout) (devices.Rollout, error) {
		return firmware.WithState(old, model, site, state, time.Now())
	}, a.event("firmware.rollout."+state, rolloutTarget(model, site), nil))
	if err != nil {
		return devices.Rollout{}, err
	}
	x.push(ctx, a, model, site)
	return r, nil
}

// Pin targets one device to a version of its model whatever the rollouts
// say ("" removes the pin): the pin is a field of the device's record, so a
// device re-opened under a new ID keeps it. An enrolled device gets a new
// config version, pushed at once.
func (x *Rollouts) Pin(ctx context.Context, a Actor, id uuid.UUID, version string) (devices.Device, error) {
	d, err := x.store.Device(ctx, id)
	if err != nil {
		return devices.Device{}, err
	}
	if !a.CanSite(d.Site) {
		return devices.Device{}, fmt.Errorf("%w: device %s is not in this token's sites", ErrForbidden, d.Serial)
	}
	if version != "" {
		if err := x.images.Has(d.Model, version); err != nil {
			return devices.Device{}, err
		}
	}
	now := time.Now().UTC()
	d, err = x.store.UpdateDevice(ctx, id, func(d *devices.Device) (*devices.AuditEvent, error) {
		d.FirmwarePin, d.UpdatedAt = version, now
		if d.State == devices.StateProvisioned || d.State == devices.StateActive {
			d.ConfigVersion++
		}
		ev := a.event("firmware.pin", d.Serial, map[string]string{"version": version, "device_id": d.ID.String()})
		ev.Time = now
		return &ev, nil
	})
	if err != nil {
		return devices.Device{}, err
	}
	if ids := enrolledIDs([]devices.Device{d}); len(ids) > 0 && x.fleet.events != nil {
		x.fleet.events.Reconfigured(ctx, ids)
	}
	return d, nil
}

// push retargets the model's devices at site; the change itself is saved,
// so a failure here is logged, and the next config any of those devices
// fetches carries the new target anyway.
func (x *Rollouts) push(ctx context.Context, a Actor, model, site string) {
	if _, err := x.fleet.Retarget(ctx, a, model, site); err != nil {
		x.fleet.log.Error("push firmware targets", "model", model, "site", site, "err", err)
	}
}
