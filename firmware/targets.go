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
	"sync"
	"time"

	"github.com/provisiond/provisiond/internal/atomicfile"

	"github.com/google/uuid"
)

// Rollout states.
const (
	Active  = "active"
	Paused  = "paused"
	Aborted = "aborted"
)

// Rollout is the target version of a model, for one site or for every
// site, given to a share of its devices. Which devices are in the share is
// decided by a hash of the rollout's ID and the device's ID, so raising the
// percentage only adds devices, and a device's answer never flips between
// two pushes.
type Rollout struct {
	ID       string    `json:"id"`
	Model    string    `json:"model"`
	Site     string    `json:"site,omitempty"` // "" for every site without its own
	Version  string    `json:"version"`
	Previous string    `json:"previous,omitempty"` // what the devices outside the share are targeted to ("" for none)
	Percent  int       `json:"percent"`            // 1-100
	State    string    `json:"state"`              // active, paused (percentage frozen), aborted (everyone back to previous)
	Updated  time.Time `json:"updated"`
}

// Targets are the rollouts and the per-device pins, kept in a JSON file
// beside the catalogue. It is safe for concurrent use.
type Targets struct {
	path string
	cat  *Catalogue
	now  func() time.Time

	mu    sync.Mutex
	state targetsFile
}

type targetsFile struct {
	Rollouts []Rollout         `json:"rollouts"`
	Pins     map[string]string `json:"pins"` // device ID -> version
}

// OpenTargets loads the targets of a catalogue.
func (c *Catalogue) OpenTargets() (*Targets, error) {
	t := &Targets{path: c.dir + "/targets.json", cat: c, now: time.Now, state: targetsFile{Pins: map[string]string{}}}
	raw, err := os.ReadFile(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &t.state); err != nil {
		return nil, fmt.Errorf("firmware targets %s: %w", t.path, err)
	}
	if t.state.Pins == nil {
		t.state.Pins = map[string]string{}
	}
	return t, nil
}

func (t *Targets) save(next targetsFile) error {
	raw, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(t.path, raw, 0o600); err != nil {
		return err
	}
	t.state = next
	return nil
}

func (s targetsFile) clone() targetsFile {
	out := targetsFile{Rollouts: append([]Rollout(nil), s.Rollouts...), Pins: make(map[string]string, len(s.Pins))}
	for k, v := range s.Pins {
		out.Pins[k] = v
	}
	return out
}

func (s targetsFile) find(model, site string) int {
	for i, r := range s.Rollouts {
		if r.Model == model && r.Site == site {
			return i
		}
	}
	return -1
}

// Rollouts lists the rollouts.
func (t *Targets) Rollouts() []Rollout {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Rollout(nil), t.state.Rollouts...)
}

// Set targets version of model at site ("" for every site) to percent of
// its devices. The version must be in the catalogue. The same version with
// another percentage keeps the rollout's share stable (raising it only adds
// devices); a paused rollout's percentage cannot change. A new version
// starts a new rollout whose devices outside the share keep the version
// the old one had given everyone.
func (t *Targets) Set(model, site, version string, percent int) (Rollout, error) {
	if percent < 1 || percent > 100 {
		return Rollout{}, fmt.Errorf("%w: percent %d (1-100)", ErrInvalid, percent)
	}
	if _, _, err := t.cat.Get(model, version); err != nil {
		return Rollout{}, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	next := t.state.clone()
	r := Rollout{Model: model, Site: site, Version: version, Percent: percent, State: Active, Updated: t.now().UTC()}
	if i := next.find(model, site); i >= 0 {
		old := next.Rollouts[i]
		switch {
		case old.Version == version && old.State == Paused:
			return Rollout{}, fmt.Errorf("%w: the rollout of %s %s is paused; resume it first", ErrNotAllowed, model, version)
		case old.Version == version && old.State == Active:
			r.ID, r.Previous = old.ID, old.Previous
		case old.State != Aborted && old.Percent == 100:
			r.Previous = old.Version
		default:
			r.Previous = old.Previous
		}
		next.Rollouts = append(next.Rollouts[:i], next.Rollouts[i+1:]...)
	}
	if r.ID == "" {
		r.ID = newID()
	}
	next.Rollouts = append(next.Rollouts, r)
	return r, t.save(next)
}

// SetState pauses, resumes (Active) or aborts a rollout.
func (t *Targets) SetState(model, site, state string) (Rollout, error) {
	if state != Active && state != Paused && state != Aborted {
		return Rollout{}, fmt.Errorf("%w: state %q", ErrInvalid, state)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	next := t.state.clone()
	i := next.find(model, site)
	if i < 0 {
		return Rollout{}, fmt.Errorf("%w: no rollout of %s for site %q", ErrNotFound, model, site)
	}
	if next.Rollouts[i].State == Aborted && state != Aborted {
		return Rollout{}, fmt.Errorf("%w: an aborted rollout stays aborted; start a new one", ErrNotAllowed)
	}
	next.Rollouts[i].State, next.Rollouts[i].Updated = state, t.now().UTC()
	return next.Rollouts[i], t.save(next)
}

// Pin targets one device to a version of its model, whatever the
// rollouts say; version "" removes the pin.
func (t *Targets) Pin(id uuid.UUID, model, version string) error {
	if version != "" {
		if _, _, err := t.cat.Get(model, version); err != nil {
			return err
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	next := t.state.clone()
	if version == "" {
		delete(next.Pins, id.String())
	} else {
		next.Pins[id.String()] = version
	}
	return t.save(next)
}

// For returns the version a device should run, and how it was chosen
// ("pin", "rollout", "previous"), or "" when nothing targets it.
func (t *Targets) For(id uuid.UUID, model, site string) (version, why string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.state.Pins[id.String()]; ok {
		return v, "pin"
	}
	// The site's rollout first, then the model's for every site: a device
	// outside a site rollout's share, with nothing before it at that site,
	// runs what the model-wide rollout gives it.
	for _, s := range []string{site, ""} {
		i := t.state.find(model, s)
		if i < 0 {
			continue
		}
		r := t.state.Rollouts[i]
		if r.State != Aborted && InShare(r.ID, id, r.Percent) {
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
