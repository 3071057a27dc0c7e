package firmware

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// The rules of rollouts. A rollout (devices.Rollout, kept in the
// inventory) targets a version of a model, at one site or every site, to a
// share of its devices. Which devices are in the share is decided by a hash
// of the rollout's ID and the device's ID, so raising the percentage only
// adds devices, and a device's answer never flips between two pushes.

// NextRollout is the rollout that targets version of model at site ("" for
// every site) to percent of its devices, given the current one (nil for
// none). The same version with another percentage keeps the rollout's share
// stable (raising it only adds devices); a paused rollout's percentage
// cannot change. A new version starts a new rollout whose devices outside
// the share keep the version the old one had given everyone.
func NextRollout(old *devices.Rollout, model, site, version string, percent int, now time.Time) (devices.Rollout, error) {
	if percent < 1 || percent > 100 {
		return devices.Rollout{}, fmt.Errorf("%w: percent %d (1-100)", ErrInvalid, percent)
	}
	r := devices.Rollout{Model: model, Site: site, Version: version, Percent: percent, State: devices.RolloutActive, Updated: now.UTC()}
	if old != nil {
		switch {
		case old.Version == version && old.State == devices.RolloutPaused:
			return devices.Rollout{}, fmt.Errorf("%w: the rollout of %s %s is paused; resume it first", ErrNotAllowed, model, version)
		case old.Version == version && old.State == devices.RolloutActive:
			r.ID, r.Previous = old.ID, old.Previous
		case old.State != devices.RolloutAborted && old.Percent == 100:
			r.Previous = old.Version
		default:
			r.Previous = old.Previous
		}
	}
	if r.ID == "" {
		r.ID = newID()
	}
	return r, nil
}

// WithState is a rollout paused, resumed (active) or aborted. An aborted
// rollout stays aborted.
func WithState(old *devices.Rollout, model, site, state string, now time.Time) (devices.Rollout, error) {
	switch {
	case state != devices.RolloutActive && state != devices.RolloutPaused && state != devices.RolloutAborted:
		return devices.Rollout{}, fmt.Errorf("%w: state %q", ErrInvalid, state)
	case old == nil:
		return devices.Rollout{}, fmt.Errorf("%w: no rollout of %s for site %q", ErrNotFound, model, site)
	case old.State == devices.RolloutAborted && state != devices.RolloutAborted:
		return devices.Rollout{}, fmt.Errorf("%w: an aborted rollout stays aborted; start a new one", ErrNotAllowed)
	}
	r := *old
	r.State, r.Updated = state, now.UTC()
	return r, nil
}

// Target returns the version a device should run, and how it was chosen
// ("pin", "rollout", "previous"), or "" when nothing targets it: its pin,
// else its site's rollout, else the model's rollout for every site.
func Target(d devices.Device, rollouts []devices.Rollout) (version, why string) {
	if d.FirmwarePin != "" {
		return d.FirmwarePin, "pin"
	}
	find := func(site string) *devices.Rollout {
		for i := range rollouts {
			if rollouts[i].Model == d.Model && rollouts[i].Site == site {
				return &rollouts[i]
			}
		}
		return nil
	}
	// The site's rollout first, then the model's for every site: a device
	// outside a site rollout's share, with nothing before it at that site,
	// runs what the model-wide rollout gives it.
	for _, s := range []string{d.Site, ""} {
		r := find(s)
		if r == nil {
			continue
		}
		if r.State != devices.RolloutAborted && InShare(r.ID, d.ID, r.Percent) {
			return r.Version, "rollout"
		}
		if r.Previous != "" {
			return r.Previous, "previous"
		}
		if s == "" {
			break
		}
	}
	return "", ""
}

// InShare reports whether a device is in the first percent of a rollout's
// devices: the first 8 bytes of SHA-256(rollout ID, device ID) modulo 100.
func InShare(rollout string, id uuid.UUID, percent int) bool {
	h := sha256.Sum256(append([]byte(rollout+":"), id[:]...))
	return int(binary.BigEndian.Uint64(h[:8])%100) < percent
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// LegacyTargetsFile is where versions before the inventory kept rollouts
// and pins, in the catalogue's directory.
const LegacyTargetsFile = "targets.json"

// LegacyTargets reads the rollouts and pins an older version kept beside
// the catalogue, for the move into the inventory; ok is false when there is
// no such file.
func (c *Catalogue) LegacyTargets() (rollouts []devices.Rollout, pins map[uuid.UUID]string, path string, ok bool, err error) {
	path = filepath.Join(c.dir, LegacyTargetsFile)
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, path, false, nil
	}
	if err != nil {
		return nil, nil, path, false, err
	}
	var file struct {
		Rollouts []devices.Rollout `json:"rollouts"`
		Pins     map[string]string `json:"pins"` // device ID -> version
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		return nil, nil, path, false, fmt.Errorf("firmware targets %s: %w", path, err)
	}
	pins = map[uuid.UUID]string{}
	for id, v := range file.Pins {
		u, err := uuid.Parse(id)
		if err != nil {
			return nil, nil, path, false, fmt.Errorf("firmware targets %s: pin of %q: %w", path, id, err)
		}
		pins[u] = v
	}
	return file.Rollouts, pins, path, true, nil
}
