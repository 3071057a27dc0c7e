package httpapi

import (
	"encoding/json"
	"net/http"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
)

// routeDoc documents a route for the OpenAPI document.
type routeDoc struct {
	summary string
	req     any // nil: no JSON body
	resp    any // nil: no JSON answer (204, or another media type)
	status  int
}

type (
	sitesList struct {
		Sites []SiteView `json:"sites"`
	}
	devicesPage struct {
		Devices []DeviceView `json:"devices"`
		Next    string       `json:"next,omitempty"`
	}
	eventsList struct {
		Events []devices.AuditEvent `json:"events"`
	}
	tokensList struct {
		Tokens []devices.Token `json:"tokens"`
	}
	status struct {
		Status string `json:"status"`
		Reason string `json:"reason,omitempty"`
	}
)

// docs documents every route; TestOpenAPI fails when a route is missing here.
var docs = map[string]routeDoc{
	"GET /healthz":                                {"Liveness", nil, status{}, 200},
	"GET /readyz":                                 {"Readiness: the store answers, the external broker is connected", nil, status{}, 200},
	"GET /metrics":                                {"Prometheus metrics (text format)", nil, nil, 200},
	"GET /api/v1/backup":                          {"Online backup: tar of an inventory snapshot and the CA directory", nil, nil, 200},
	"GET /api/v1/cluster":                         {"The replicas sharing the inventory in etcd, the elected one, etcd's members (404 on a single node)", nil, ClusterStatus{}, 200},
	"GET /api/v1/ca":                              {"Root CA certificate (PEM)", nil, nil, 200},
	"GET /api/v1/crl":                             {"Certificate revocation list (DER)", nil, nil, 200},
	"POST /ocsp":                                  {"OCSP responder (RFC 6960), DER request body", nil, nil, 200},
	"GET /ocsp/":                                  {"OCSP responder, GET form: /ocsp/{base64 DER request}", nil, nil, 200},
	"GET /api/v1/info":                            {"Where devices reach the service, and the root CA", nil, Info{}, 200},
	"GET /api/v1/openapi.json":                    {"This document", nil, nil, 200},
	"GET /api/v1/sites":                           {"List sites (a site-limited token sees its sites)", nil, sitesList{}, 200},
	"POST /api/v1/sites":                          {"Create a site", SiteRequest{}, SiteView{}, 201},
	"GET /api/v1/sites/{name}":                    {"Show a site, with pool use and convergence", nil, SiteView{}, 200},
	"PATCH /api/v1/sites/{name}":                  {"Change a site: every enrolled device gets a new config version, pushed at once", SiteRequest{}, SiteView{}, 200},
	"DELETE /api/v1/sites/{name}":                 {"Delete a site no device uses", nil, nil, 204},
	"POST /api/v1/batches":                        {"Register a factory batch (mint, import)", BatchRequest{}, BatchResponse{}, 200},
	"GET /api/v1/factory/cas":                     {"Manufacturer CAs whose factory certificates (IDevIDs) authenticate devices", nil, factoryCAList{}, 200},
	"POST /api/v1/factory/cas":                    {"Register a manufacturer root or intermediate CA for a model (optionally a batch, first-contact registration, expired certificates)", FactoryCARequest{}, FactoryCAView{}, 201},
	"DELETE /api/v1/factory/cas/{id}":             {"Remove a manufacturer CA (by ID or a prefix of 8+ hex digits): no new enrollment under it", nil, FactoryCAView{}, 200},
	"GET /api/v1/devices":                         {"List devices with filters and cursor pagination", nil, devicesPage{}, 200},
	"GET /api/v1/devices/{ref}":                   {"Show a device (by serial or ID) with its certificate and recent history", nil, DeviceView{}, 200},
	"GET /api/v1/devices/{ref}/history":           {"A device's audit events", nil, eventsList{}, 200},
	"GET /api/v1/devices/export":                  {"Export devices matching the list filters (format=csv or json lines)", nil, nil, 200},
	"PATCH /api/v1/devices/config":                {"Set or clear the config override of devices, a site or a batch (a job of chunks); pushed after each chunk", OverrideRequest{}, OverrideResponse{}, 200},
	"POST /api/v1/claims":                         {"Claim a device for a site with its label's claim code", ClaimRequest{}, DeviceView{}, 200},
	"GET /api/v1/firmware":                        {"The firmware catalogue, the rollouts with their progress, and the public key that signs manifests", nil, FirmwareView{}, 200},
	"POST /api/v1/firmware":                       {"Add an image (application/octet-stream body, up to 256 MiB; query: model, version, min_bootloader, min_hardware, notes); the server signs its manifest", nil, FirmwareAdded{}, 201},
	"PUT /api/v1/firmware/rollouts":               {"Target a version of a model to a share of its devices, at one site or every site", RolloutRequest{}, devices.Rollout{}, 200},
	"POST /api/v1/firmware/rollouts/state":        {"Pause, resume or abort a rollout", RolloutStateRequest{}, devices.Rollout{}, 200},
	"PUT /api/v1/devices/{ref}/firmware":          {"Pin one device to a version (empty: follow the rollouts)", PinRequest{}, nil, 204},
	"GET /fw/{digest}":                            {"Download an image by its SHA-256; mutual TLS with the device certificate; Range requests resume", nil, nil, 200},
	"POST /api/v1/qr-decode":                      {"Read the QR code in a camera frame (image/png or image/jpeg body, up to 4 MiB); 422 when there is none", nil, QRText{}, 200},
	"POST /api/v1/revocations":                    {"Revoke devices, a site or a batch, with a reason (a job of chunks)", RevokeRequest{}, RevokeResponse{}, 200},
	"GET /api/v1/jobs":                            {"Bulk operations (revocations, reconfigurations, firmware retargets), running ones first", nil, JobList{}, 200},
	"GET /api/v1/jobs/{id}":                       {"One bulk operation: its selection and progress (total, done, changed, state)", nil, devices.Job{}, 200},
	"POST /api/v1/devices/{ref}/reopen":           {"Re-open a revoked device with a fresh claim token", nil, ReopenResponse{}, 200},
	"POST /api/v1/devices/{ref}/rebootstrap":      {"Let a provisioned device's next LwM2M bootstrap through (fresh credentials)", nil, DeviceView{}, 200},
	"GET /api/v1/lwm2m/credentials":               {"Export the management-server PSKs of the selected devices (CSV or JSON lines)", nil, nil, 200},
	"GET /api/v1/radius/mac-auth":                 {"A RADIUS server's MAC authorisation (?mac=): the device's Wi-Fi passphrase as FreeRADIUS rest JSON (reply:Tunnel-Password); 404 unknown, 403 revoked", nil, nil, 200},
	"GET /api/v1/devices/{ref}/lwm2m-credentials": {"The management-server PSK a device's LwM2M bootstrap gave it", nil, enroll.LwM2MCredentials{}, 200},
	"GET /api/v1/audit":                           {"Audit events newest first (query: before=ID, limit), or oldest first from after=ID; next is the following page's cursor", nil, AuditPage{}, 200},
	"GET /api/v1/audit/verify":                    {"Verify every audit hash chain; the head's hash covers each chain's newest event", nil, devices.AuditHead{}, 200},
	"POST /api/v1/server-certificates":            {"Issue a server certificate (an external MQTT broker's)", ServerCertRequest{}, ServerCertResponse{}, 201},
	"GET /api/v1/tokens":                          {"List API tokens", nil, tokensList{}, 200},
	"POST /api/v1/tokens":                         {"Create an API token (its secret is shown once)", TokenRequest{}, TokenCreated{}, 201},
	"DELETE /api/v1/tokens/{id}":                  {"Revoke an API token", nil, nil, 204},
}

// OpenAPI builds the OpenAPI 3.1 document of the API from the route table.
func OpenAPI() []byte {
	schemas := map[string]any{"Error": schemaOf(reflect.TypeOf(ErrorBody{}), nil)}
	paths := map[string]map[string]any{}
	for _, rt := range Routes() {
		d := docs[rt.Pattern]
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if path == "/ocsp/" {
			path = "/ocsp/{request}"
		}
		op := map[string]any{"summary": d.summary, "operationId": opID(rt.Pattern)}
		var params []any
		for _, p := range strings.Split(path, "/") {
			if strings.HasPrefix(p, "{") {
				params = append(params, map[string]any{"name": strings.Trim(p, "{}"), "in": "path", "required": true,
					"schema": map[string]any{"type": "string"}})
			}
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.Role != "" {
			op["security"] = []any{map[string]any{"bearer": []any{}}}
			op["x-provisiond-role"] = string(rt.Role)
			op["x-provisiond-site-limited-tokens"] = !rt.Global
		}
		if d.req != nil {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": ref(d.req, schemas)}}}
		}
		ok := map[string]any{"description": "success"}
		if d.resp != nil {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": ref(d.resp, schemas)}}
		}
		errResp := map[string]any{"description": "error", "content": map[string]any{
			"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Error"}}}}
		resps := map[string]any{itoa(d.status): ok, "default": errResp}
		if rt.Role != "" {
			resps["401"] = map[string]any{"description": "no or unknown token"}
			resps["403"] = map[string]any{"description": "role too low, or token limited to other sites"}
		}
		op["responses"] = resps
		if paths[path] == nil {
			paths[path] = map[string]any{}
		}
		paths[path][strings.ToLower(method)] = op
	}
	doc := map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{"title": "provisiond operations API", "version": "1",
			"description": "Generated from the route table (transport/httpapi). docs/protocol.md explains every field."},
		"paths": paths,
		"components": map[string]any{"schemas": schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}}},
	}
	out, _ := json.MarshalIndent(doc, "", "  ")
	return append(out, '\n')
}

func opID(pattern string) string {
	r := strings.NewReplacer("/api/v1/", "", "/", "_", "{", "", "}", "", "-", "_", " ", "_")
	return strings.Trim(r.Replace(strings.ToLower(pattern)), "_")
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func ref(v any, schemas map[string]any) any {
	t := reflect.TypeOf(v)
	schemas[t.Name()] = schemaOf(t, schemas)
	return map[string]any{"$ref": "#/components/schemas/" + t.Name()}
}

var (
	timeType = reflect.TypeOf(time.Time{})
	uuidType = reflect.TypeOf(uuid.UUID{})
)

// schemaOf describes a Go type as JSON Schema, following encoding/json's rules.
func schemaOf(t reflect.Type, schemas map[string]any) map[string]any {
	switch {
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case t == uuidType:
		return map[string]any{"type": "string", "format": "uuid"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem(), schemas)
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int64, reflect.Uint64, reflect.Uint32, reflect.Int32:
		return map[string]any{"type": "integer"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), schemas)}
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		var walk func(t reflect.Type)
		walk = func(t reflect.Type) {
			for i := range t.NumField() {
				f := t.Field(i)
				if f.Anonymous && f.Type.Kind() == reflect.Struct {
					walk(f.Type)
					continue
				}
				if !f.IsExported() {
					continue
				}
				name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
				if name == "-" {
					continue
				}
				if name == "" {
					name = f.Name
				}
				props[name] = schemaOf(f.Type, schemas)
				if !strings.Contains(opts, "omit") && f.Type.Kind() != reflect.Pointer {
					required = append(required, name)
				}
			}
		}
		walk(t)
		s := map[string]any{"type": "object", "properties": props}
		if len(required) > 0 {
			sort.Strings(required)
			s["required"] = required
		}
		return s
	}
	return map[string]any{}
}

func (a *API) getOpenAPI(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	openAPIOnce.Do(func() { openAPIDoc = OpenAPI() })
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPIDoc)
}

var (
	openAPIOnce sync.Once
	openAPIDoc  []byte
)
