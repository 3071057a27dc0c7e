package devices

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
)

// Firmware rollouts live in the inventory beside the devices they target
// (a device's pin is a field of its record, so it moves with the record
// when a re-opened device gets a new ID):
//
//	rollouts   model \x00 site -> Rollout   (site "" for every site)
var bucketRollouts = []byte("rollouts")

// Rollout states.
const (
	RolloutActive  = "active"
	RolloutPaused  = "paused"  // percentage frozen
	RolloutAborted = "aborted" // everyone back to Previous
)

// Rollout is the target version of a model, for one site or for every
// site, given to a share of its devices (package firmware decides the
// share and the rules for changing a rollout).
type Rollout struct {
	ID       string    `json:"id"`
	Model    string    `json:"model"`
	Site     string    `json:"site,omitempty"` // "" for every site without its own
	Version  string    `json:"version"`
	Previous string    `json:"previous,omitempty"` // what the devices outside the share are targeted to ("" for none)
	Percent  int       `json:"percent"`            // 1-100
	State    string    `json:"state"`              // active, paused, aborted
	Updated  time.Time `json:"updated"`
}

func rolloutKey(model, site string) []byte { return []byte(model + "\x00" + site) }

// Rollouts lists every rollout, by model and site.
func (s *Store) Rollouts(ctx context.Context) ([]Rollout, error) {
	return listJSON[Rollout](ctx, s, bucketRollouts)
}

// ChangeRollout reads the rollout of model at site (nil when there is
// none), lets decide return the new one, and stores it with its audit event
// in one transaction; the event's detail gets the new version, percentage,
// previous version and state. decide may run more than once.
func (s *Store) ChangeRollout(ctx context.Context, model, site string, decide func(old *Rollout) (Rollout, error), ev AuditEvent) (Rollout, error) {
	var out Rollout
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		var old Rollout
		ok, err := getJSON(tx, bucketRollouts, rolloutKey(model, site), &old)
		if err != nil {
			return err
		}
		var prev *Rollout
		if ok {
			prev = &old
		}
		r, err := decide(prev)
		if err != nil {
			return err
		}
		if r.Model != model || r.Site != site {
			return fmt.Errorf("%w: a rollout of %s at %q stored as one of %s at %q", ErrInvalid, r.Model, r.Site, model, site)
		}
		if err := putJSON(tx, bucketRollouts, rolloutKey(model, site), r); err != nil {
			return err
		}
		e := ev.with("version", r.Version, "percent", strconv.Itoa(r.Percent), "state", r.State)
		if r.Previous != "" {
			e.Detail["previous"] = r.Previous
		}
		out = r
		return appendAudit(tx, e)
	})
	return out, err
}

// ImportTargets moves the rollouts and pins that older versions kept in a
// file beside the firmware catalogue into the inventory, in one
// transaction; what the inventory holds already wins. Pins of devices that
// no longer exist are dropped. It returns how many rollouts and pins it
// took.
func (s *Store) ImportTargets(ctx context.Context, rollouts []Rollout, pins map[uuid.UUID]string, now time.Time, ev AuditEvent) (int, int, error) {
	var nr, np int
	err := s.db.Update(ctx, func(tx kv.Tx) error {
		nr, np = 0, 0
		for _, r := range rollouts {
			raw, err := tx.Get(bucketRollouts, rolloutKey(r.Model, r.Site))
			if err != nil {
				return err
			}
			if raw != nil {
				continue
			}
			if err := putJSON(tx, bucketRollouts, rolloutKey(r.Model, r.Site), r); err != nil {
				return err
			}
			nr++
		}
		for id, v := range pins {
			d, err := getDevice(tx, id)
			if err != nil || d.FirmwarePin != "" {
				continue
			}
			if _, err := mutate(tx, d, now, func(d *Device) error { d.FirmwarePin = v; return nil }); err != nil {
				return err
			}
			np++
		}
		e := ev
		e.Time = now
		e.Detail = map[string]string{"rollouts": strconv.Itoa(nr), "pins": strconv.Itoa(np)}
		return appendAudit(tx, e)
	})
	return nr, np, err
}
