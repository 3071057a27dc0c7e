package httpapi

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"

	"github.com/provisiond/provisiond/pki/profile"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/firmware"
)

// FirmwareCatalogue is the image store the API uses (firmware.Catalogue).
type FirmwareCatalogue interface {
	Add(r io.Reader, meta firmware.Meta) (firmware.Signed, firmware.Manifest, error)
	List() ([]firmware.Manifest, error)
	ByDigest(model, digest string) (firmware.Manifest, bool)
	Image(digest string) (*os.File, error)
	PublicKeyPEM() []byte
}

// FirmwareTargets are the rollout and pin workflows (enroll.Rollouts).
type FirmwareTargets interface {
	List(ctx context.Context) ([]devices.Rollout, error)
	Set(ctx context.Context, a enroll.Actor, model, site, version string, percent int) (devices.Rollout, error)
	SetState(ctx context.Context, a enroll.Actor, model, site, state string) (devices.Rollout, error)
	Pin(ctx context.Context, a enroll.Actor, id uuid.UUID, version string) (devices.Device, error)
}

var _ FirmwareTargets = (*enroll.Rollouts)(nil)

// DeviceAuthorizer checks that a verified device certificate is the
// device's current one and that the device is not revoked.
type DeviceAuthorizer func(ctx context.Context, id uuid.UUID, certSerial string) error

type firmwareDeps struct {
	cat       FirmwareCatalogue
	targets   FirmwareTargets
	authorize DeviceAuthorizer
}

// FirmwareView is the catalogue, the rollouts and the signing key.
type FirmwareView struct {
	PublicKey string              `json:"public_key"` // PEM
	Images    []firmware.Manifest `json:"images"`
	Rollouts  []RolloutView       `json:"rollouts"`
}

// RolloutView is a rollout with its progress: the devices of the model (at
// the site) by the version they report.
type RolloutView struct {
	devices.Rollout
	Devices   int            `json:"devices"`
	OnVersion int            `json:"on_version"`
	Reported  map[string]int `json:"reported"` // version -> devices ("" for none reported)
	Unhealthy int            `json:"unhealthy"`
}

// FirmwareAdded is the answer to an upload.
type FirmwareAdded struct {
	Manifest firmware.Manifest `json:"manifest"`
	Signed   firmware.Signed   `json:"signed"`
}

// RolloutRequest targets a version.
type RolloutRequest struct {
	Model   string `json:"model"`
	Site    string `json:"site,omitempty"`
	Version string `json:"version"`
	Percent int    `json:"percent"`
}

// RolloutStateRequest pauses, resumes or aborts a rollout.
type RolloutStateRequest struct {
	Model string `json:"model"`
	Site  string `json:"site,omitempty"`
	State string `json:"state"` // active, paused, aborted
}

// PinRequest pins a device to a version ("" removes the pin).
type PinRequest struct {
	Version string `json:"version"`
}

var errNoFirmware = fmt.Errorf("%w: firmware is not enabled on this server", devices.ErrNotFound)

// noFirmware answers 404 when the server has no firmware catalogue
// (Config.Firmware was nil).
func (a *API) noFirmware(w http.ResponseWriter) bool {
	if a.fw == nil {
		a.fail(w, errNoFirmware)
		return true
	}
	return false
}

func (a *API) listFirmware(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	ctx := r.Context()
	if a.noFirmware(w) {
		return
	}
	imgs, err := a.fw.cat.List()
	if err != nil {
		a.fail(w, err)
		return
	}
	rollouts, err := a.fw.targets.List(ctx)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := FirmwareView{PublicKey: string(a.fw.cat.PublicKeyPEM()), Images: imgs, Rollouts: []RolloutView{}}
	for _, r := range rollouts {
		if r.Site != "" && !actor.CanSite(r.Site) {
			continue
		}
		v := RolloutView{Rollout: r, Reported: map[string]int{}}
		f := devices.Filter{Model: r.Model, Site: r.Site, Limit: 1000}
		for {
			list, next, err := a.inv.Devices(ctx, f)
			if err != nil {
				a.fail(w, err)
				return
			}
			for _, d := range list {
				if d.State != devices.StateProvisioned && d.State != devices.StateActive {
					continue
				}
				v.Devices++
				v.Reported[d.FirmwareVersion]++
				if d.FirmwareVersion == r.Version {
					v.OnVersion++
				}
				if d.Health != "" && d.Health != "ok" {
					v.Unhealthy++
				}
			}
			if next == uuid.Nil {
				break
			}
			f.After = next
		}
		out.Rollouts = append(out.Rollouts, v)
	}
	writeJSON(w, 200, out)
}

func (a *API) addFirmware(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if a.noFirmware(w) {
		return
	}
	q := r.URL.Query()
	s, m, err := a.fw.cat.Add(r.Body, firmware.Meta{Model: q.Get("model"), Version: q.Get("version"),
		MinBootloader: q.Get("min_bootloader"), MinHardware: q.Get("min_hardware"), Notes: q.Get("notes")})
	if err != nil {
		a.fail(w, err)
		return
	}
	a.audit(r.Context(), actor, "firmware.add", m.Model+"/"+m.Version, map[string]string{"sha256": m.SHA256, "size": strconv.FormatInt(m.Size, 10)})
	writeJSON(w, http.StatusCreated, FirmwareAdded{Manifest: m, Signed: s})
}

func (a *API) setRollout(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req RolloutRequest
	if a.noFirmware(w) {
		return
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Site != "" {
		if _, err := a.inv.Site(r.Context(), req.Site); err != nil {
			a.fail(w, err)
			return
		}
	}
	ro, err := a.fw.targets.Set(r.Context(), actor, req.Model, req.Site, req.Version, req.Percent)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, ro)
}

func (a *API) setRolloutState(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req RolloutStateRequest
	if a.noFirmware(w) {
		return
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	ro, err := a.fw.targets.SetState(r.Context(), actor, req.Model, req.Site, req.State)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, ro)
}

func (a *API) pinFirmware(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req PinRequest
	if a.noFirmware(w) {
		return
	}
	d, err := a.resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, err)
		return
	}
	if forbidSite(w, actor, d.Site) { // before the body: another site's device is not this token's business
		return
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if _, err := a.fw.targets.Pin(r.Context(), actor, d.ID, req.Version); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// downloadFirmware serves an image to a device over mutual TLS: the
// device's certificate must be its current one, the device not revoked,
// and the image one of its model's. Range requests resume a download.
func (a *API) downloadFirmware(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	if a.noFirmware(w) {
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || len(r.TLS.VerifiedChains) == 0 {
		writeError(w, http.StatusUnauthorized, "unauthorized", "present the device certificate (mutual TLS)")
		return
	}
	id, serial, err := profile.Identify(r.TLS.PeerCertificates[0])
	if err == nil {
		err = a.fw.authorize(r.Context(), id, serial)
	}
	if err != nil {
		writeError(w, http.StatusForbidden, "forbidden", err.Error())
		return
	}
	d, err := a.inv.Device(r.Context(), id)
	if err != nil {
		a.fail(w, err)
		return
	}
	digest := r.PathValue("digest")
	m, ok := a.fw.cat.ByDigest(d.Model, digest)
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "no image of the device's model has that digest")
		return
	}
	f, err := a.fw.cat.Image(digest)
	if err != nil {
		a.fail(w, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+digest+`"`)
	http.ServeContent(w, r, "", m.Created, f)
}

func (a *API) audit(ctx context.Context, actor enroll.Actor, action, target string, detail map[string]string) {
	if err := a.inv.AppendAudit(ctx, devices.AuditEvent{Actor: actor.Name, Action: action, Target: target, Source: actor.Source, Detail: detail}); err != nil {
		a.log.Error("audit", "action", action, "err", err)
	}
}
