package httpapi

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
)

// SiteRequest creates a site (POST) or, with every field optional, changes
// one (PATCH). The passphrase is write-only: answers never contain it.
type SiteRequest struct {
	Name       *string   `json:"name,omitempty"`
	SSID       *string   `json:"ssid,omitempty"`
	Security   *string   `json:"security,omitempty"`
	Passphrase *string   `json:"passphrase,omitempty"`
	CIDR       *string   `json:"cidr,omitempty"`
	Gateway    *string   `json:"gateway,omitempty"`
	DNS        *[]string `json:"dns,omitempty"`
	NTP        *[]string `json:"ntp,omitempty"`
	Lease      *string   `json:"lease,omitempty"`    // Go duration, e.g. "24h"
	Reenroll   *string   `json:"reenroll,omitempty"` // keep-identity (default) or new-identity
	// RADIUSServerName is the name devices of an enterprise site check in
	// the RADIUS server's certificate; "" removes it.
	RADIUSServerName *string `json:"radius_server_name,omitempty"`
	// NAS replaces the site's access points that take Disconnect-Requests
	// when a device is revoked (each with its secret; [] removes them).
	NAS *[]devices.NAS `json:"nas,omitempty"`
	// PerDevicePSK gives each device of a wpa2-psk site a passphrase of
	// its own, served to the site's RADIUS server by MAC.
	PerDevicePSK *bool `json:"per_device_psk,omitempty"`
	// LwM2M sets the site's LwM2M bootstrap profile; one with an empty
	// server_uri removes it.
	LwM2M *devices.LwM2MProfile `json:"lwm2m,omitempty"`
}

// SiteView is a site as the API shows it.
type SiteView struct {
	Name          string   `json:"name"`
	SSID          string   `json:"ssid"`
	Security      string   `json:"security"`
	PassphraseSet bool     `json:"passphrase_set"`
	CIDR          string   `json:"cidr"`
	Gateway       string   `json:"gateway"`
	DNS           []string `json:"dns,omitempty"`
	NTP           []string `json:"ntp,omitempty"`
	Lease         string   `json:"lease"`
	Reenroll      string   `json:"reenroll"`
	// RADIUSServerName: enterprise sites (docs/network.md).
	RADIUSServerName string `json:"radius_server_name,omitempty"`
	// NAS are the addresses of the site's Disconnect-Request targets (the
	// secrets are write-only).
	NAS []string `json:"nas,omitempty"`
	// PerDevicePSK: each device gets a passphrase of its own.
	PerDevicePSK bool `json:"per_device_psk,omitempty"`
	// LwM2M is the site's LwM2M bootstrap profile, absent when it has none.
	LwM2M       *devices.LwM2MProfile `json:"lwm2m,omitempty"`
	Version     uint64                `json:"version"`
	PoolSize    int                   `json:"pool_size"`
	LeasesInUse int                   `json:"leases_in_use"`
	Devices     int                   `json:"devices"`
	// Convergence: enrolled devices, and those that reported applying their current config.
	Enrolled      int       `json:"enrolled"`
	ConfigApplied int       `json:"config_applied"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// apply copies the request's fields onto s; errors name the field.
func (req SiteRequest) apply(s *devices.Site) error {
	if req.SSID != nil {
		s.SSID = *req.SSID
	}
	if req.Security != nil {
		s.Security = devices.Security(*req.Security)
		if s.Security.Enterprise() && req.Passphrase == nil {
			s.Passphrase = "" // to an enterprise mode: the passphrase goes
		}
	}
	if req.Passphrase != nil {
		s.Passphrase = *req.Passphrase
	}
	if req.RADIUSServerName != nil {
		s.RADIUSServerName = *req.RADIUSServerName
	}
	if req.NAS != nil {
		s.NAS = append([]devices.NAS(nil), *req.NAS...)
	}
	if req.PerDevicePSK != nil {
		s.PerDevicePSK = *req.PerDevicePSK
	}
	if req.CIDR != nil {
		p, err := netip.ParsePrefix(*req.CIDR)
		if err != nil {
			return fmt.Errorf("%w: cidr: %q is not a prefix such as 10.20.0.0/24", devices.ErrInvalid, *req.CIDR)
		}
		s.CIDR = p
		if req.Gateway == nil {
			s.Gateway = netip.Addr{} // default again for the new prefix
		}
	}
	if req.Gateway != nil {
		s.Gateway = netip.Addr{}
		if *req.Gateway != "" {
			g, err := netip.ParseAddr(*req.Gateway)
			if err != nil {
				return fmt.Errorf("%w: gateway: %q is not an IP address", devices.ErrInvalid, *req.Gateway)
			}
			s.Gateway = g
		}
	}
	if req.DNS != nil {
		s.DNS = nil
		for _, d := range *req.DNS {
			a, err := netip.ParseAddr(d)
			if err != nil {
				return fmt.Errorf("%w: dns: %q is not an IP address", devices.ErrInvalid, d)
			}
			s.DNS = append(s.DNS, a)
		}
	}
	if req.NTP != nil {
		s.NTP = *req.NTP
	}
	if req.Reenroll != nil {
		s.Reenroll = devices.Reenroll(*req.Reenroll)
	}
	if req.LwM2M != nil {
		s.LwM2M = nil
		if req.LwM2M.ServerURI != "" {
			p := *req.LwM2M
			s.LwM2M = &p
		}
	}
	if req.Lease != nil {
		d, err := time.ParseDuration(*req.Lease)
		if err != nil {
			return fmt.Errorf("%w: lease: %q is not a duration such as 24h", devices.ErrInvalid, *req.Lease)
		}
		s.LeaseTTL = d
	}
	return nil
}

func (a *API) view(ctx context.Context, s devices.Site) (SiteView, error) {
	n, err := a.inv.SiteDeviceCount(ctx, s.Name)
	if err != nil {
		return SiteView{}, err
	}
	inUse, err := a.inv.LeasesInUse(ctx, s.Name, time.Now())
	if err != nil {
		return SiteView{}, err
	}
	enrolled, applied, err := a.inv.Convergence(ctx, s.Name)
	if err != nil {
		return SiteView{}, err
	}
	v := SiteView{Name: s.Name, SSID: s.SSID, Security: string(s.Security), PassphraseSet: s.Passphrase != "",
		CIDR: s.CIDR.String(), Gateway: s.Gateway.String(), NTP: s.NTP, Lease: s.LeaseTTL.String(), Reenroll: string(s.Reenroll), LwM2M: s.LwM2M,
		RADIUSServerName: s.RADIUSServerName, PerDevicePSK: s.PerDevicePSK,
		Version: s.Version, PoolSize: s.PoolSize(), LeasesInUse: inUse, Devices: n, Enrolled: enrolled, ConfigApplied: applied,
		CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt}
	for _, n := range s.NAS {
		v.NAS = append(v.NAS, n.Address)
	}
	for _, d := range s.DNS {
		v.DNS = append(v.DNS, d.String())
	}
	return v, nil
}

func (a *API) listSites(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	sites, err := a.inv.Sites(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]SiteView, 0, len(sites))
	for _, s := range sites {
		if !actor.CanSite(s.Name) {
			continue
		}
		v, err := a.view(r.Context(), s)
		if err != nil {
			a.fail(w, err)
			return
		}
		out = append(out, v)
	}
	writeJSON(w, 200, map[string]any{"sites": out})
}

func (a *API) createSite(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req SiteRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	var s devices.Site
	if req.Name != nil {
		s.Name = *req.Name
	}
	if forbidSite(w, actor, s.Name) {
		return
	}
	if err := req.apply(&s); err != nil {
		a.fail(w, err)
		return
	}
	s, err := a.fleet.CreateSite(r.Context(), actor, s)
	if err != nil {
		a.fail(w, err)
		return
	}
	a.writeSite(r.Context(), w, http.StatusCreated, s)
}

func (a *API) writeSite(ctx context.Context, w http.ResponseWriter, status int, s devices.Site) {
	v, err := a.view(ctx, s)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, status, v)
}

func (a *API) getSite(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if forbidSite(w, actor, r.PathValue("name")) {
		return
	}
	s, err := a.inv.Site(r.Context(), r.PathValue("name"))
	if err != nil {
		a.fail(w, err)
		return
	}
	a.writeSite(r.Context(), w, 200, s)
}

func (a *API) updateSite(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if forbidSite(w, actor, r.PathValue("name")) {
		return
	}
	var req SiteRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Name != nil && *req.Name != r.PathValue("name") {
		a.fail(w, fmt.Errorf("%w: name: a site cannot be renamed", devices.ErrInvalid))
		return
	}
	s, err := a.fleet.UpdateSite(r.Context(), actor, r.PathValue("name"), req.apply)
	if err != nil {
		a.fail(w, err)
		return
	}
	a.writeSite(r.Context(), w, 200, s)
}

func (a *API) deleteSite(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if forbidSite(w, actor, r.PathValue("name")) {
		return
	}
	if err := a.fleet.DeleteSite(r.Context(), actor, r.PathValue("name")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// BatchRequest registers a factory batch (provctl factory mint and import).
type BatchRequest struct {
	Model  string               `json:"model,omitempty"`
	Site   string               `json:"site,omitempty"`
	Source string               `json:"source,omitempty"`
	Rows   []enroll.ManifestRow `json:"rows"`
}

// BatchResponse reports each row's outcome, in request order.
type BatchResponse struct {
	Batch    devices.Batch       `json:"batch"`
	Created  int                 `json:"created"`
	Existing int                 `json:"existing"`
	Rejected int                 `json:"rejected"`
	Results  []devices.RowResult `json:"results"`
}

func (a *API) importBatch(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req BatchRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if forbidSite(w, actor, req.Site) {
		return
	}
	if req.Source == "" {
		req.Source = "api"
	}
	b, res, err := a.fleet.ImportBatch(r.Context(), actor, enroll.BatchSpec{Model: req.Model, Site: req.Site, Source: req.Source}, req.Rows)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := BatchResponse{Batch: b, Results: res}
	for _, r := range res {
		switch r.Status {
		case devices.RowCreated:
			out.Created++
		case devices.RowExists:
			out.Existing++
		default:
			out.Rejected++
		}
	}
	writeJSON(w, 200, out)
}

// DeviceView is a device as the API shows it (never its token hash).
type DeviceView struct {
	ID              uuid.UUID            `json:"id"`
	Serial          string               `json:"serial"`
	Model           string               `json:"model"`
	BatchID         string               `json:"batch_id,omitempty"`
	Site            string               `json:"site,omitempty"`
	State           string               `json:"state"`
	FirmwareVersion string               `json:"firmware_version,omitempty"`
	MAC             string               `json:"mac,omitempty"`
	CertSerial      string               `json:"cert_serial,omitempty"`
	CertNotAfter    *time.Time           `json:"cert_not_after,omitempty"`
	Certificate     string               `json:"certificate,omitempty"` // PEM, on GET /devices/{ref} only
	History         []devices.AuditEvent `json:"history,omitempty"`     // on GET /devices/{ref} only: the last 50 events
	Lease           *LeaseView           `json:"lease,omitempty"`
	ConfigVersion   uint64               `json:"config_version,omitempty"`
	AppliedVersion  uint64               `json:"applied_config_version,omitempty"`
	Override        *OverrideFields      `json:"override,omitempty"`     // passphrase never shown
	WiFiPSKSet      bool                 `json:"wifi_psk_set,omitempty"` // the device has a Wi-Fi passphrase of its own (never shown)
	Health          string               `json:"health,omitempty"`
	LastSeen        *time.Time           `json:"last_seen,omitempty"`
	ProvisionedAt   *time.Time           `json:"provisioned_at,omitempty"`
	CreatedAt       time.Time            `json:"created_at"`
	UpdatedAt       time.Time            `json:"updated_at"`
}

// LeaseView is a lease as the API shows it.
type LeaseView struct {
	Address string    `json:"address"`
	Expires time.Time `json:"expires"`
}

func deviceView(d devices.Device, withCert bool) DeviceView {
	v := DeviceView{ID: d.ID, Serial: d.Serial, Model: d.Model, BatchID: d.BatchID, Site: d.Site, State: string(d.State),
		FirmwareVersion: d.FirmwareVersion, MAC: d.MAC, CertSerial: d.CertSerial, ConfigVersion: d.ConfigVersion,
		WiFiPSKSet: d.WiFiPSK != "", CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt}
	if !d.CertNotAfter.IsZero() {
		t := d.CertNotAfter
		v.CertNotAfter = &t
	}
	if !d.ProvisionedAt.IsZero() {
		t := d.ProvisionedAt
		v.ProvisionedAt = &t
	}
	if !d.LastSeen.IsZero() {
		t := d.LastSeen
		v.LastSeen = &t
	}
	v.AppliedVersion, v.Health = d.AppliedConfigVersion, d.Health
	if o := d.Override; o != nil {
		v.Override = &OverrideFields{SSID: o.SSID, Security: string(o.Security), NTP: o.NTP}
		for _, ip := range o.DNS {
			v.Override.DNS = append(v.Override.DNS, ip.String())
		}
		if o.Passphrase != "" {
			v.Override.Passphrase = "(set)"
		}
	}
	if d.Lease != nil {
		v.Lease = &LeaseView{Address: d.Lease.Addr.String(), Expires: d.Lease.Expires}
	}
	if withCert && len(d.CertDER) > 0 {
		v.Certificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.CertDER}))
	}
	return v
}

// deviceFilter reads the list filters and applies the token's site limits.
func (a *API) deviceFilter(w http.ResponseWriter, r *http.Request, actor enroll.Actor) (devices.Filter, bool) {
	q := r.URL.Query()
	f := devices.Filter{Site: q.Get("site"), State: devices.State(q.Get("state")), Model: q.Get("model"),
		Firmware: q.Get("firmware"), Batch: q.Get("batch")}
	for name, dst := range map[string]*time.Time{"seen_within": &f.SeenAfter, "not_seen_within": &f.NotSeenSince} {
		if v := q.Get(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				a.fail(w, fmt.Errorf("%w: %s: a duration such as 24h", errBadRequest, name))
				return f, false
			}
			*dst = time.Now().Add(-d)
		}
	}
	if s := q.Get("after"); s != "" {
		id, err := uuid.Parse(s)
		if err != nil {
			a.fail(w, fmt.Errorf("%w: after: not a device ID", errBadRequest))
			return f, false
		}
		f.After = id
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			a.fail(w, fmt.Errorf("%w: limit: 1-1000", errBadRequest))
			return f, false
		}
		f.Limit = n
	}
	if f.Site == "" && len(actor.Sites) == 1 {
		f.Site = actor.Sites[0] // a token for one site sees that site
	}
	if len(actor.Sites) > 0 && f.Site == "" {
		writeError(w, http.StatusForbidden, "forbidden", "a token limited to several sites must name one: ?site=")
		return f, false
	}
	if forbidSite(w, actor, f.Site) {
		return f, false
	}
	return f, true
}

func (a *API) listDevices(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	f, ok := a.deviceFilter(w, r, actor)
	if !ok {
		return
	}
	list, next, err := a.inv.Devices(r.Context(), f)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := struct {
		Devices []DeviceView `json:"devices"`
		Next    string       `json:"next,omitempty"`
	}{Devices: make([]DeviceView, 0, len(list))}
	for _, d := range list {
		out.Devices = append(out.Devices, deviceView(d, false))
	}
	if next != uuid.Nil {
		out.Next = next.String()
	}
	writeJSON(w, 200, out)
}

// exportDevices streams every matching device as CSV or JSON lines.
func (a *API) exportDevices(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	header := []string{"serial", "id", "model", "site", "state", "batch", "firmware_version", "address",
		"cert_serial", "cert_not_after", "config_version", "applied_config_version", "health", "last_seen"}
	a.export(w, r, actor, "export devices", header, func(d devices.Device) (any, []string, error) {
		v := deviceView(d, false)
		addr, notAfter, seen := "", "", ""
		if v.Lease != nil {
			addr = v.Lease.Address
		}
		if v.CertNotAfter != nil {
			notAfter = v.CertNotAfter.Format(time.RFC3339)
		}
		if v.LastSeen != nil {
			seen = v.LastSeen.Format(time.RFC3339)
		}
		return v, []string{v.Serial, v.ID.String(), v.Model, v.Site, v.State, v.BatchID, v.FirmwareVersion, addr,
			v.CertSerial, notAfter, strconv.FormatUint(v.ConfigVersion, 10), strconv.FormatUint(v.AppliedVersion, 10), v.Health, seen}, nil
	})
}

// export streams the devices the request's list filters select, a row
// each (row's JSON value, or its CSV record under header; nil: the device
// is left out), as CSV (format=csv, the default) or JSON lines, paging
// through the inventory. A failure after the headers ends the export short
// (logged as what).
func (a *API) export(w http.ResponseWriter, r *http.Request, actor enroll.Actor, what string, header []string,
	row func(devices.Device) (any, []string, error)) {
	f, ok := a.deviceFilter(w, r, actor)
	if !ok {
		return
	}
	format := r.URL.Query().Get("format")
	if format == "" {
		format = "csv"
	}
	if format != "csv" && format != "json" {
		a.fail(w, fmt.Errorf("%w: format: csv or json", errBadRequest))
		return
	}
	var cw *csv.Writer
	var enc *json.Encoder
	if format == "csv" {
		w.Header().Set("Content-Type", "text/csv")
		cw = csv.NewWriter(w)
		defer cw.Flush()
		_ = cw.Write(header)
	} else {
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc = json.NewEncoder(w)
	}
	f.Limit = 1000
	for {
		list, next, err := a.inv.Devices(r.Context(), f)
		if err != nil {
			a.log.Error(what, "err", err) // headers are gone: the export ends short
			return
		}
		for _, d := range list {
			v, rec, err := row(d)
			switch {
			case err != nil:
				a.log.Error(what, "serial", d.Serial, "err", err)
				return
			case v == nil:
			case enc != nil:
				_ = enc.Encode(v)
			default:
				_ = cw.Write(rec)
			}
		}
		if next == uuid.Nil {
			return
		}
		f.After = next
	}
}

func (a *API) deviceHistory(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	d, err := a.resolve(r.Context(), r.PathValue("ref"))
	if err != nil {
		a.fail(w, err)
		return
	}
	if forbidSite(w, actor, d.Site) {
		return
	}
	evs, err := a.inv.History(r.Context(), d.Serial, 1000)
	if err != nil {
		a.fail(w, err)
		return
	}
	if evs == nil {
		evs = []devices.AuditEvent{}
	}
	writeJSON(w, 200, map[string]any{"events": evs})
}

func (a *API) getDevice(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	ref := r.PathValue("ref")
	var d devices.Device
	var err error
	if id, perr := uuid.Parse(ref); perr == nil {
		d, err = a.inv.Device(r.Context(), id)
	} else {
		d, err = a.inv.DeviceBySerial(r.Context(), ref)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	if forbidSite(w, actor, d.Site) {
		return
	}
	v := deviceView(d, true)
	if v.History, err = a.inv.History(r.Context(), d.Serial, 1000); err != nil {
		a.fail(w, err)
		return
	}
	if len(v.History) > 50 {
		v.History = v.History[len(v.History)-50:]
	}
	writeJSON(w, 200, v)
}
