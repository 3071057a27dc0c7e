package httpapi

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/wire"
)

// Revocation is what the revocation routes need.
type Revocation interface {
	CRL() []byte                                              // the current DER CRL
	OCSP(ctx context.Context, request []byte) ([]byte, error) // a DER OCSP response
}

// RevokeRequest revokes devices: any of a list (serials or IDs), a site and a batch.
type RevokeRequest struct {
	Devices []string `json:"devices,omitempty"`
	Site    string   `json:"site,omitempty"`
	Batch   string   `json:"batch,omitempty"`
	Reason  string   `json:"reason"`
}

// RevokeResponse lists what was revoked (devices already revoked are not).
type RevokeResponse struct {
	Job     string       `json:"job"` // GET /api/v1/jobs/{id}
	Revoked int          `json:"revoked"`
	Devices []DeviceView `json:"devices"`
}

// ReopenResponse carries a re-opened device's fresh claim token, shown once.
type ReopenResponse struct {
	Device     DeviceView  `json:"device"`
	ClaimToken string      `json:"claim_token"`
	Bundle     wire.Bundle `json:"bundle"` // to flash the device with again
}

func (a *API) resolve(ctx context.Context, ref string) (devices.Device, error) {
	if id, err := uuid.Parse(ref); err == nil {
		return a.inv.Device(ctx, id)
	}
	return a.inv.DeviceBySerial(ctx, ref)
}

// selector turns device references (serials or IDs), a site and a batch
// into a selection.
func (a *API) selector(ctx context.Context, refs []string, site, batch string) (devices.Selector, error) {
	sel := devices.Selector{Site: site, Batch: batch}
	for _, ref := range refs {
		d, err := a.resolve(ctx, ref)
		if err != nil {
			return sel, err
		}
		sel.IDs = append(sel.IDs, d.ID)
	}
	return sel, nil
}

func (a *API) revoke(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req RevokeRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	sel, err := a.selector(r.Context(), req.Devices, req.Site, req.Batch)
	if err != nil {
		a.fail(w, err)
		return
	}
	job, revoked, err := a.fleet.Revoke(r.Context(), actor, sel, req.Reason)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := RevokeResponse{Job: job.ID, Revoked: len(revoked), Devices: make([]DeviceView, 0, len(revoked))}
	for _, d := range revoked {
		out.Devices = append(out.Devices, deviceView(d, false))
	}
	writeJSON(w, 200, out)
}

func (a *API) reopen(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	d, err := a.resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, err)
		return
	}
	tok, d, err := a.fleet.Reopen(r.Context(), actor, d.ID)
	if err != nil {
		a.fail(w, err)
		return
	}
	info := a.info()
	writeJSON(w, 200, ReopenResponse{Device: deviceView(d, false), ClaimToken: tok,
		Bundle: wire.Bundle{Serial: d.Serial, ClaimToken: tok, RootCA: info.RootCA, Endpoints: info.Endpoints, Model: d.Model}})
}

// rebootstrap lets a provisioned device's next LwM2M bootstrap through.
func (a *API) rebootstrap(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	d, err := a.resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, err)
		return
	}
	if d, err = a.fleet.Rebootstrap(r.Context(), actor, d.ID); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, deviceView(d, false))
}

// lwm2mCredentials answers the PSK a device's LwM2M bootstrap gave it for
// its management server (security mode psk).
func (a *API) lwm2mCredentials(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	d, err := a.resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, err)
		return
	}
	c, err := a.fleet.LwM2MCredentials(r.Context(), actor, d.ID)
	if err != nil {
		a.fail(w, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, 200, c)
}

// exportLwM2MCredentials writes the management-server PSKs of the
// selected devices (the device list's filters), for the LwM2M management
// server's security store: CSV (endpoint, psk_identity, psk) or JSON lines.
func (a *API) exportLwM2MCredentials(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	w.Header().Set("Cache-Control", "no-store")
	a.export(w, r, actor, "export lwm2m credentials", []string{"endpoint", "psk_identity", "psk"},
		func(d devices.Device) (any, []string, error) {
			if d.LwM2MPSK == "" || d.State == devices.StateRevoked {
				return nil, nil, nil
			}
			c, err := a.fleet.LwM2MCredentials(r.Context(), actor, d.ID)
			return c, []string{c.Endpoint, c.PSKIdentity, c.PSK}, err
		})
}

func (a *API) getCRL(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	w.Header().Set("Content-Type", "application/pkix-crl")
	_, _ = w.Write(a.revocation.CRL())
}

// ocsp answers POST /ocsp (DER body) and GET /ocsp/{base64 request} (RFC 6960 appendix A).
func (a *API) ocsp(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	var der []byte
	var err error
	if r.Method == http.MethodGet {
		raw := strings.TrimPrefix(r.URL.EscapedPath(), "/ocsp/")
		if raw, err = url.PathUnescape(raw); err == nil {
			der, err = base64.StdEncoding.DecodeString(raw)
		}
	} else {
		der, err = io.ReadAll(io.LimitReader(r.Body, 64*1024))
	}
	if err != nil {
		http.Error(w, "malformed OCSP request", http.StatusBadRequest)
		return
	}
	resp, err := a.revocation.OCSP(r.Context(), der)
	if err != nil {
		a.log.Info("ocsp request refused", "err", err)
		http.Error(w, "malformed OCSP request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	_, _ = w.Write(resp)
}

// ClaimRequest is an installer's scan: the label's claim code (or its URL)
// and the site to bind the device to.
type ClaimRequest struct {
	Code string `json:"code"`
	Site string `json:"site"`
}

func (a *API) claim(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req ClaimRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	d, err := a.fleet.Claim(r.Context(), actor, req.Code, req.Site)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, deviceView(d, false))
}

// OverrideRequest changes the config override of devices in bulk: any of a
// list (serials or IDs), a site and a batch. Clear removes the override.
type OverrideRequest struct {
	Devices  []string        `json:"devices,omitempty"`
	Site     string          `json:"site,omitempty"`
	Batch    string          `json:"batch,omitempty"`
	Override *OverrideFields `json:"override,omitempty"`
	Clear    bool            `json:"clear,omitempty"`
}

// OverrideFields are the per-device changes to a site profile.
type OverrideFields struct {
	SSID       string   `json:"ssid,omitempty"`
	Security   string   `json:"security,omitempty"`
	Passphrase string   `json:"passphrase,omitempty"` // write-only
	DNS        []string `json:"dns,omitempty"`
	NTP        []string `json:"ntp,omitempty"`
}

// OverrideResponse says how many devices changed and how many enrolled ones
// got a new config version pushed.
type OverrideResponse struct {
	Job     string `json:"job"` // GET /api/v1/jobs/{id}
	Changed int    `json:"changed"`
	Pushed  int    `json:"pushed"`
}

func (a *API) setOverride(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req OverrideRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if (req.Override == nil) == !req.Clear {
		a.fail(w, fmt.Errorf("%w: give either override or clear", errBadRequest))
		return
	}
	sel, err := a.selector(r.Context(), req.Devices, req.Site, req.Batch)
	if err != nil {
		a.fail(w, err)
		return
	}
	var o *devices.ConfigOverride
	if req.Override != nil {
		o = &devices.ConfigOverride{SSID: req.Override.SSID, Security: devices.Security(req.Override.Security),
			Passphrase: req.Override.Passphrase, NTP: req.Override.NTP}
		for _, s := range req.Override.DNS {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				a.fail(w, fmt.Errorf("%w: override.dns: %q is not an IP address", errBadRequest, s))
				return
			}
			o.DNS = append(o.DNS, ip)
		}
	}
	job, pushed, err := a.fleet.SetOverride(r.Context(), actor, sel, o)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, OverrideResponse{Job: job.ID, Changed: job.Changed, Pushed: pushed})
}

// JobList is the answer of GET /api/v1/jobs.
type JobList struct {
	Jobs []devices.Job `json:"jobs"`
}

func (a *API) listJobs(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	jobs, err := a.fleet.Jobs(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	if jobs == nil {
		jobs = []devices.Job{}
	}
	writeJSON(w, 200, JobList{Jobs: jobs})
}

func (a *API) getJob(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	job, err := a.fleet.Job(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, job)
}
