package server_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestRoleRouteMatrix asserts every cell of routes x roles, with the routes
// taken from the route table itself: no token 401, a role below the route's
// 403, at or above it neither; and a token limited to another site 403 on
// every route that touches site hq or is closed to site-limited tokens.
func TestRoleRouteMatrix(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	env.Site("other", "10.30.0.0/24")
	dev := env.Mint(1, "hq")[0]
	pool := x509.NewCertPool()
	pool.AddCert(env.Server.CA().Root())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + env.Server.HTTPAddr().String()

	token := func(role devices.Role, sites ...string) string {
		var res httpapi.TokenCreated
		if err := env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "matrix", Role: role, Sites: sites}, &res); err != nil {
			t.Fatal(err)
		}
		return res.Secret
	}
	victim := func() string { // a token for DELETE /tokens/{id} to remove
		var res httpapi.TokenCreated
		env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "victim", Role: devices.RoleViewer}, &res)
		return res.ID
	}
	n := 0
	request := func(pattern string) (method, path, body string) {
		n++
		method, path, _ = strings.Cut(pattern, " ")
		path = strings.NewReplacer("{name}", "hq", "{ref}", dev.Serial, "{id}", victim()).Replace(path)
		switch pattern {
		case "POST /api/v1/sites":
			body = fmt.Sprintf(`{"name":"s%d","ssid":"x","security":"wpa2-psk","passphrase":"12345678","cidr":"10.%d.0.0/24"}`, n, 40+n%200)
		case "PATCH /api/v1/sites/{name}":
			body = `{"ssid":"renamed"}`
		case "DELETE /api/v1/sites/{name}":
			body = ""
		case "POST /api/v1/batches":
			body = fmt.Sprintf(`{"site":"hq","model":"M","rows":[{"serial":"MX-%d","claim_token":"TOKENTOKENTOKEN%04d"}]}`, n, n)
		case "POST /api/v1/tokens":
			body = `{"name":"t","role":"viewer"}`
		case "POST /api/v1/server-certificates":
			body = `{"names":["broker.example"]}`
		case "GET /api/v1/devices":
			path += "?site=hq"
		case "POST /api/v1/revocations":
			body = `{"devices":["` + dev.Serial + `"],"reason":"matrix"}`
		}
		return method, path, body
	}
	do := func(pattern, tok string) (int, string) {
		method, path, body := request(pattern)
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	rank := map[devices.Role]int{"": 0, devices.RoleRADIUS: 0, devices.RoleViewer: 1, devices.RoleInstaller: 2, devices.RoleOperator: 3, devices.RoleAdmin: 4}
	// The radius role is beside the ranks: its route takes it, operators
	// and admins; it takes no other route (not even a viewer's).
	allowed := func(has, need devices.Role) bool {
		if need == devices.RoleRADIUS {
			return has == devices.RoleRADIUS || rank[has] >= rank[devices.RoleOperator]
		}
		return rank[has] >= rank[need]
	}
	roles := []devices.Role{devices.RoleRADIUS, devices.RoleViewer, devices.RoleInstaller, devices.RoleOperator, devices.RoleAdmin}
	tokens := map[devices.Role]string{}
	for _, r := range roles {
		tokens[r] = token(r)
	}
	elsewhere := token(devices.RoleAdmin, "other")
	routes := httpapi.Routes()
	// The matrix checks that routes enforce the table; these pin the table
	// itself where a downgrade would hurt most.
	pinned := map[string]devices.Role{
		"POST /api/v1/tokens": devices.RoleAdmin, "DELETE /api/v1/tokens/{id}": devices.RoleAdmin, "GET /api/v1/tokens": devices.RoleAdmin,
		"POST /api/v1/server-certificates": devices.RoleAdmin, "DELETE /api/v1/sites/{name}": devices.RoleAdmin,
		"POST /api/v1/sites": devices.RoleAdmin, "POST /api/v1/batches": devices.RoleOperator,
		"POST /api/v1/revocations": devices.RoleOperator, "POST /api/v1/devices/{ref}/reopen": devices.RoleOperator,
		"GET /api/v1/radius/mac-auth": devices.RoleRADIUS, "GET /api/v1/lwm2m/credentials": devices.RoleOperator,
	}
	for _, rt := range routes {
		if want, ok := pinned[rt.Pattern]; ok && rt.Role != want {
			t.Errorf("%s needs %q in the route table, want %q", rt.Pattern, rt.Role, want)
		}
		delete(pinned, rt.Pattern)
	}
	if len(pinned) > 0 {
		t.Errorf("routes missing from the table: %v", pinned)
	}
	// Routes for devices, authenticated by the device certificate: no API
	// token opens them (TestFirmwareAPI covers the certificate side).
	deviceOnly := map[string]bool{"GET /fw/{digest}": true}
	for _, rt := range routes {
		t.Run(rt.Pattern, func(t *testing.T) {
			if deviceOnly[rt.Pattern] {
				for _, tok := range append([]string{"", elsewhere}, tokens[devices.RoleAdmin], tokens[devices.RoleViewer]) {
					if code, body := do(rt.Pattern, tok); code != 401 {
						t.Errorf("a token instead of a device certificate: %d %s, want 401", code, body)
					}
				}
				return
			}
			if code, body := do(rt.Pattern, ""); (rt.Role == "") != (code != 401) {
				t.Errorf("no token: %d %s", code, body)
			}
			for _, role := range roles {
				code, body := do(rt.Pattern, tokens[role])
				denied := code == 401 || code == 403
				if want := !allowed(role, rt.Role); denied != want || (want && code != 403) {
					t.Errorf("%s: %d %s (route needs %q)", role, code, body, rt.Role)
				}
			}
			touchesHQ := strings.Contains(rt.Pattern, "{name}") || strings.Contains(rt.Pattern, "{ref}") ||
				rt.Pattern == "GET /api/v1/devices" || rt.Pattern == "POST /api/v1/batches" || rt.Pattern == "POST /api/v1/sites" ||
				rt.Pattern == "POST /api/v1/revocations"
			if rt.Role != "" && (rt.Global || touchesHQ) {
				if code, body := do(rt.Pattern, elsewhere); code != 403 {
					t.Errorf("admin limited to site other: %d %s, want 403", code, body)
				}
			}
		})
	}
	// A site-limited token lists only its sites.
	var sites struct{ Sites []httpapi.SiteView }
	c, _ := httpapi.NewClient(base, elsewhere, env.Server.CA().RootPEM())
	if err := c.Do(ctxT(t), "GET", "/api/v1/sites", nil, &sites); err != nil || len(sites.Sites) != 1 || sites.Sites[0].Name != "other" {
		t.Errorf("limited token lists %+v (%v)", sites.Sites, err)
	}
}
