// Package httpapi is provisiond's HTTPS operations API under /api/v1: sites,
// factory batches, the device inventory and the audit log, for provctl and
// scripts. Requests and answers are JSON; every route but /api/v1/ca and
// /healthz needs a bearer token. docs/protocol.md lists the routes.
package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/firmware"
)

// Inventory is what the API reads.
type Inventory interface {
	Site(ctx context.Context, name string) (devices.Site, error)
	Sites(ctx context.Context) ([]devices.Site, error)
	SiteDeviceCount(ctx context.Context, name string) (int, error)
	LeasesInUse(ctx context.Context, site string, now time.Time) (int, error)
	Convergence(ctx context.Context, site string) (enrolled, applied int, err error)
	Device(ctx context.Context, id uuid.UUID) (devices.Device, error)
	DeviceBySerial(ctx context.Context, serial string) (devices.Device, error)
	Devices(ctx context.Context, f devices.Filter) ([]devices.Device, uuid.UUID, error)
	Audit(ctx context.Context, q devices.AuditQuery) ([]devices.AuditEvent, error)
	History(ctx context.Context, target string, limit int) ([]devices.AuditEvent, error)
	TokenByHash(ctx context.Context, hash []byte) (devices.Token, error)
	AppendAudit(ctx context.Context, ev devices.AuditEvent) error
	VerifyAudit(ctx context.Context) (devices.AuditHead, error)
	AuditAnchors(ctx context.Context) ([]devices.AuditAnchor, error)
}

// Fleet is what the API changes.
type Fleet interface {
	CreateSite(ctx context.Context, a enroll.Actor, s devices.Site) (devices.Site, error)
	UpdateSite(ctx context.Context, a enroll.Actor, name string, fn func(*devices.Site) error) (devices.Site, error)
	DeleteSite(ctx context.Context, a enroll.Actor, name string) error
	Revoke(ctx context.Context, a enroll.Actor, sel devices.Selector, reason string) (devices.Job, []devices.Device, error)
	Claim(ctx context.Context, a enroll.Actor, code, site string) (devices.Device, error)
	SetOverride(ctx context.Context, a enroll.Actor, sel devices.Selector, o *devices.ConfigOverride) (job devices.Job, pushed int, err error)
	Job(ctx context.Context, id string) (devices.Job, error)
	Jobs(ctx context.Context) ([]devices.Job, error)
	Reopen(ctx context.Context, a enroll.Actor, id uuid.UUID) (string, devices.Device, error)
	ImportBatch(ctx context.Context, a enroll.Actor, spec enroll.BatchSpec, rows []enroll.ManifestRow) (devices.Batch, []devices.RowResult, error)
	AddFactoryCA(ctx context.Context, a enroll.Actor, spec enroll.FactoryCASpec) (devices.FactoryCA, error)
	FactoryCAs(ctx context.Context) ([]devices.FactoryCA, error)
	RemoveFactoryCA(ctx context.Context, a enroll.Actor, ref string) (devices.FactoryCA, error)
	Rebootstrap(ctx context.Context, a enroll.Actor, id uuid.UUID) (devices.Device, error)
	LwM2MCredentials(ctx context.Context, a enroll.Actor, id uuid.UUID) (enroll.LwM2MCredentials, error)
	// WiFiKey is the Wi-Fi passphrase of the enrolled device that
	// reported a MAC, for the RADIUS server's MAC authorisation.
	WiFiKey(ctx context.Context, a enroll.Actor, mac string) (enroll.WiFiKey, error)
}

// Info is what GET /api/v1/info reports: where devices reach the service.
type Info struct {
	Endpoints []string `json:"endpoints"` // e.g. coaps://host:5684
	RootCA    string   `json:"root_ca"`   // PEM
	Version   string   `json:"version"`
}

// Config is what the API is built on. Inventory, Fleet, Access,
// Revocation and Info are required; the rest may be left out.
type Config struct {
	Inventory  Inventory
	Fleet      Fleet
	Access     Access
	Revocation Revocation
	Info       func() Info

	Metrics http.Handler                           // GET /metrics; nil: 404
	Ready   func(context.Context) error            // GET /readyz; nil: always ready
	Backup  func(context.Context, io.Writer) error // GET /api/v1/backup; nil: 404
	// Cluster reports the replicas sharing the inventory (GET
	// /api/v1/cluster); nil: 404, the inventory is this server's own.
	Cluster func(context.Context) (ClusterStatus, error)
	Pages   http.Handler // the web pages (installer, console) served beside the API
	// Firmware enables the firmware routes (nil: they answer 404).
	Firmware *Firmware
	// Routes are mounted from outside (another front end, such as EST):
	// guarded by role and site like the API's own, and listed by Routes.
	Routes []Route
}

// Firmware is what the firmware routes use.
type Firmware struct {
	Catalogue FirmwareCatalogue
	Targets   FirmwareTargets
	Authorize DeviceAuthorizer
}

// Route is an HTTPS route and who may call it.
type Route struct {
	Pattern string       // "METHOD /path", net/http's ServeMux pattern
	Role    devices.Role // minimum role; "" = public (the handler authenticates)
	Global  bool         // refused to tokens limited to sites
	Handle  func(w http.ResponseWriter, r *http.Request, actor enroll.Actor)
}

// API serves the routes.
type API struct {
	inv        Inventory
	fleet      Fleet
	access     Access
	revocation Revocation
	metrics    http.Handler
	ready      func(context.Context) error
	backup     func(context.Context, io.Writer) error
	cluster    func(context.Context) (ClusterStatus, error)
	info       func() Info
	log        *slog.Logger
	mux        *http.ServeMux
	web        http.Handler
	fw         *firmwareDeps
	mounted    []Route
}

// MaxBodyBytes bounds a request body (a batch of 100,000 rows fits).
const MaxBodyBytes = 32 << 20

// New returns the API handler.
func New(cfg Config, log *slog.Logger) *API {
	a := &API{inv: cfg.Inventory, fleet: cfg.Fleet, access: cfg.Access, revocation: cfg.Revocation, info: cfg.Info,
		metrics: cfg.Metrics, ready: cfg.Ready, backup: cfg.Backup, cluster: cfg.Cluster, web: cfg.Pages, mounted: cfg.Routes,
		log: log, mux: http.NewServeMux()}
	if f := cfg.Firmware; f != nil {
		a.fw = &firmwareDeps{cat: f.Catalogue, targets: f.Targets, authorize: f.Authorize}
	}
	for _, r := range a.routes() {
		a.mux.Handle(r.pattern, a.guard(r))
	}
	return a
}

// ServeHTTP routes a request. When no route matches, the mux decides the
// status (404, or 405 with an Allow header) and the answer is our JSON error.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if a.web != nil && isPage(r) {
		a.web.ServeHTTP(w, r)
		return
	}
	h, pattern := a.mux.Handler(r)
	if pattern != "" {
		a.mux.ServeHTTP(w, r) // sets the path values that Handler does not
		return
	}
	rec := &statusOnly{header: http.Header{}}
	h.ServeHTTP(rec, r)
	if allow := rec.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	if rec.status == http.StatusMethodNotAllowed {
		writeError(w, rec.status, "method_not_allowed", "use "+rec.header.Get("Allow"))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no such route")
}

// isPage tells the browser pages (Config.Pages, package web) from the
// API: GET of /, /claim, /console and /ui/... The pages are public; what
// they show comes from the API with the user's token.
func isPage(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	switch p := r.URL.Path; {
	case p == "/", p == "/claim", p == "/console", strings.HasPrefix(p, "/ui/"):
		return true
	}
	return false
}

// statusOnly records what the mux's fallback handler would answer.
type statusOnly struct {
	header http.Header
	status int
}

func (s *statusOnly) Header() http.Header         { return s.header }
func (s *statusOnly) Write(b []byte) (int, error) { return len(b), nil }
func (s *statusOnly) WriteHeader(code int)        { s.status = code }

type route struct {
	pattern string
	role    devices.Role // minimum role; "" = public
	global  bool         // refused to tokens limited to sites
	handle  func(w http.ResponseWriter, r *http.Request, actor enroll.Actor)
}

// RouteInfo describes one route's access rule (for documentation and the
// role x route test matrix).
type RouteInfo struct {
	Pattern string       // "METHOD /path"
	Role    devices.Role // minimum role; "" = public
	Global  bool         // refused to site-limited tokens
}

// Routes lists the API's own routes and their access rules.
func Routes() []RouteInfo { return (&API{}).Routes() }

// Routes lists every route a serves, mounted ones included, and its access
// rule.
func (a *API) Routes() []RouteInfo {
	var out []RouteInfo
	for _, r := range a.routes() {
		out = append(out, RouteInfo{Pattern: r.pattern, Role: r.role, Global: r.global})
	}
	return out
}

func (a *API) routes() []route {
	rs := a.ownRoutes()
	for _, m := range a.mounted {
		rs = append(rs, route{m.Pattern, m.Role, m.Global, m.Handle})
	}
	return rs
}

func (a *API) ownRoutes() []route {
	const global = true
	health := func(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
		writeJSON(w, 200, map[string]string{"status": "ok"})
	}
	return []route{
		{"GET /healthz", "", false, health},
		{"GET /readyz", "", false, a.readyz},
		{"GET /metrics", devices.RoleViewer, global, a.getMetrics},
		{"GET /api/v1/backup", devices.RoleAdmin, global, a.getBackup},
		{"GET /api/v1/cluster", devices.RoleViewer, global, a.getCluster},
		{"GET /api/v1/ca", "", false, a.getCA},
		{"GET /api/v1/crl", "", false, a.getCRL},
		{"POST /ocsp", "", false, a.ocsp},
		{"GET /ocsp/", "", false, a.ocsp},
		{"GET /api/v1/info", devices.RoleViewer, false, a.getInfo},
		{"GET /api/v1/openapi.json", "", false, a.getOpenAPI},
		{"GET /api/v1/sites", devices.RoleViewer, false, a.listSites},
		{"POST /api/v1/sites", devices.RoleAdmin, false, a.createSite},
		{"GET /api/v1/sites/{name}", devices.RoleViewer, false, a.getSite},
		{"PATCH /api/v1/sites/{name}", devices.RoleOperator, false, a.updateSite},
		{"DELETE /api/v1/sites/{name}", devices.RoleAdmin, false, a.deleteSite},
		{"POST /api/v1/batches", devices.RoleOperator, false, a.importBatch},
		{"GET /api/v1/factory/cas", devices.RoleViewer, global, a.listFactoryCAs},
		{"POST /api/v1/factory/cas", devices.RoleAdmin, global, a.addFactoryCA},
		{"DELETE /api/v1/factory/cas/{id}", devices.RoleAdmin, global, a.removeFactoryCA},
		{"GET /api/v1/devices", devices.RoleViewer, false, a.listDevices},
		{"GET /api/v1/devices/{ref}", devices.RoleViewer, false, a.getDevice},
		{"GET /api/v1/devices/{ref}/history", devices.RoleViewer, false, a.deviceHistory},
		{"GET /api/v1/devices/export", devices.RoleViewer, false, a.exportDevices},
		{"POST /api/v1/claims", devices.RoleInstaller, false, a.claim},
		{"POST /api/v1/qr-decode", devices.RoleInstaller, false, a.decodeQR},
		{"GET /api/v1/firmware", devices.RoleViewer, false, a.listFirmware},
		{"POST /api/v1/firmware", devices.RoleOperator, global, a.addFirmware},
		{"PUT /api/v1/firmware/rollouts", devices.RoleOperator, global, a.setRollout},
		{"POST /api/v1/firmware/rollouts/state", devices.RoleOperator, global, a.setRolloutState},
		{"PUT /api/v1/devices/{ref}/firmware", devices.RoleOperator, false, a.pinFirmware},
		{"GET /fw/{digest}", "", false, a.downloadFirmware},
		{"PATCH /api/v1/devices/config", devices.RoleOperator, false, a.setOverride},
		{"POST /api/v1/revocations", devices.RoleOperator, false, a.revoke},
		{"POST /api/v1/devices/{ref}/reopen", devices.RoleOperator, false, a.reopen},
		{"POST /api/v1/devices/{ref}/rebootstrap", devices.RoleOperator, false, a.rebootstrap},
		{"GET /api/v1/devices/{ref}/lwm2m-credentials", devices.RoleOperator, false, a.lwm2mCredentials},
		{"GET /api/v1/lwm2m/credentials", devices.RoleOperator, false, a.exportLwM2MCredentials},
		{"GET /api/v1/radius/mac-auth", devices.RoleRADIUS, false, a.radiusMACAuth},
		{"GET /api/v1/jobs", devices.RoleViewer, global, a.listJobs},
		{"GET /api/v1/jobs/{id}", devices.RoleViewer, global, a.getJob},
		{"GET /api/v1/audit", devices.RoleViewer, global, a.listAudit},
		{"GET /api/v1/audit/verify", devices.RoleViewer, global, a.verifyAudit},
		{"POST /api/v1/server-certificates", devices.RoleAdmin, global, a.issueServerCert},
		{"GET /api/v1/tokens", devices.RoleAdmin, global, a.listTokens},
		{"POST /api/v1/tokens", devices.RoleAdmin, global, a.createToken},
		{"DELETE /api/v1/tokens/{id}", devices.RoleAdmin, global, a.deleteToken},
	}
}

// forbidSite answers 403 and returns true when the actor may not act on site.
func forbidSite(w http.ResponseWriter, actor enroll.Actor, site string) bool {
	if actor.CanSite(site) {
		return false
	}
	what := "site " + site
	if site == "" {
		what = "devices without a site"
	}
	writeError(w, http.StatusForbidden, "forbidden", "this token is limited to sites "+strings.Join(actor.Sites, ", ")+", not "+what)
	return true
}

var roleRank = map[devices.Role]int{devices.RoleViewer: 1, devices.RoleInstaller: 2, devices.RoleOperator: 3, devices.RoleAdmin: 4}

// roleAllows says whether a token of role has may use a route that needs
// role need. The radius role is beside the ranks: its routes take it and
// operators and admins; it takes no other route.
func roleAllows(has, need devices.Role) bool {
	if need == devices.RoleRADIUS {
		return has == devices.RoleRADIUS || roleRank[has] >= roleRank[devices.RoleOperator]
	}
	return roleRank[has] >= roleRank[need] // radius ranks 0
}

func (a *API) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		actor := enroll.Actor{Name: "anonymous", Source: clientAddr(r)}
		if rt.role != "" {
			secret, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || secret == "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="provisiond"`)
				writeError(w, http.StatusUnauthorized, "unauthorized", "bearer token required")
				return
			}
			h := sha256.Sum256([]byte(strings.TrimSpace(secret)))
			tok, err := a.inv.TokenByHash(r.Context(), h[:])
			if err != nil && !errors.Is(err, devices.ErrNotFound) {
				a.fail(w, err) // the store, not the token (503 when unavailable)
				return
			}
			if err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="provisiond", error="invalid_token"`)
				writeError(w, http.StatusUnauthorized, "unauthorized", "unknown token")
				return
			}
			if !roleAllows(tok.Role, rt.role) {
				writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("needs role %s, token has %s", rt.role, tok.Role))
				return
			}
			if rt.global && len(tok.Sites) > 0 {
				writeError(w, http.StatusForbidden, "forbidden", "a token limited to sites cannot use this route")
				return
			}
			actor.Name, actor.Sites = "token:"+tok.ID, tok.Sites
		}
		limit := int64(MaxBodyBytes)
		if rt.pattern == "POST /api/v1/firmware" {
			limit = firmware.MaxImageBytes
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		rt.handle(w, r, actor)
	})
}

func clientAddr(r *http.Request) string {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.String()
	}
	return r.RemoteAddr
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	var b ErrorBody
	b.Error.Code, b.Error.Message = code, msg
	writeJSON(w, status, b)
}

// fail maps a domain error to an HTTP answer.
func (a *API) fail(w http.ResponseWriter, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body larger than %d bytes", mbe.Limit))
	case errors.Is(err, enroll.ErrClaimRejected):
		writeError(w, http.StatusForbidden, "claim_rejected", err.Error())
	case errors.Is(err, enroll.ErrThrottled):
		if d, ok := enroll.RetryAfter(err); ok {
			w.Header().Set("Retry-After", fmt.Sprint(int(d.Seconds())+1))
		}
		writeError(w, http.StatusTooManyRequests, "throttled", err.Error())
	case errors.Is(err, enroll.ErrForbidden):
		writeError(w, http.StatusForbidden, "forbidden", err.Error())
	case errors.Is(err, devices.ErrInvalid), errors.Is(err, enroll.ErrInvalid), errors.Is(err, errBadRequest), errors.Is(err, firmware.ErrInvalid):
		writeError(w, http.StatusBadRequest, "invalid", err.Error())
	case errors.Is(err, devices.ErrNotFound), errors.Is(err, firmware.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, devices.ErrExists), errors.Is(err, firmware.ErrExists), errors.Is(err, firmware.ErrNotAllowed):
		writeError(w, http.StatusConflict, "exists", err.Error())
	case errors.Is(err, devices.ErrAuditTampered):
		writeError(w, http.StatusConflict, "audit_tampered", err.Error())
	case errors.Is(err, enroll.ErrTokenInUse):
		writeError(w, http.StatusConflict, "in_use", err.Error())
	case errors.Is(err, devices.ErrSiteInUse):
		writeError(w, http.StatusConflict, "in_use", err.Error())
	case errors.Is(err, kv.ErrUnavailable):
		w.Header().Set("Retry-After", "15")
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the inventory's store is unavailable; retry later")
	default:
		a.log.Error("api request failed", "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error")
	}
}

var errBadRequest = errors.New("bad request")

func decode(r *http.Request, v any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("%w: Content-Type must be application/json", errBadRequest)
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return fmt.Errorf("%w: body: %w", errBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: body: trailing data after the JSON object", errBadRequest)
	}
	return nil
}

func (a *API) getCA(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write([]byte(a.info().RootCA))
}

func (a *API) getInfo(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	writeJSON(w, 200, a.info())
}

// AuditPage is the answer of GET /api/v1/audit: a page of events and, when
// there may be more, the cursor for the next page (before=Next, or after=Next
// when the page was read oldest first).
type AuditPage struct {
	Events []devices.AuditEvent `json:"events"`
	Next   string               `json:"next,omitempty"`
	// Anchors are where pruned chains start (the first page of an
	// oldest-first walk carries them): a verifier needs them before the
	// events.
	Anchors []devices.AuditAnchor `json:"anchors,omitempty"`
}

// listAudit pages through the log newest first (before=ID), or oldest first
// when after= is given (after= with no ID starts at the oldest event).
func (a *API) listAudit(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	q := r.URL.Query()
	limit, _ := strconv.Atoi(q.Get("limit"))
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	query := devices.AuditQuery{Before: q.Get("before"), After: q.Get("after"), Ascending: q.Has("after"), Limit: limit}
	evs, err := a.inv.Audit(r.Context(), query)
	if err != nil {
		a.fail(w, err)
		return
	}
	page := AuditPage{Events: evs}
	if query.Ascending && query.After == "" {
		if page.Anchors, err = a.inv.AuditAnchors(r.Context()); err != nil {
			a.fail(w, err)
			return
		}
	}
	if evs == nil {
		page.Events = []devices.AuditEvent{}
	}
	if len(evs) == limit {
		page.Next = evs[len(evs)-1].ID
	}
	writeJSON(w, 200, page)
}

// verifyAudit checks every chain of the log and answers its head: record
// Hash somewhere else to detect later rewrites of the whole log.
func (a *API) verifyAudit(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	head, err := a.inv.VerifyAudit(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, 200, head)
}

// WriteError writes the API's JSON error body; mounted front ends use it
// for their JSON routes.
func WriteError(w http.ResponseWriter, status int, code, msg string) {
	writeError(w, status, code, msg)
}
