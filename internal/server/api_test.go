package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/transport/httpapi"
)

func TestAPIAuthAndErrors(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	pool := x509.NewCertPool()
	pool.AddCert(env.Server.CA().Root())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + env.Server.HTTPAddr().String()
	cases := []struct {
		name, method, path, token, body string
		status                          int
		contains                        string
	}{
		{"health needs no token", "GET", "/healthz", "", "", 200, "ok"},
		{"root CA needs no token", "GET", "/api/v1/ca", "", "", 200, "BEGIN CERTIFICATE"},
		{"no token", "GET", "/api/v1/sites", "", "", 401, "bearer token required"},
		{"unknown token", "GET", "/api/v1/sites", "pvd_nope", "", 401, "unknown token"},
		{"unknown route", "GET", "/api/v1/nope", "admin", "", 404, "not_found"},
		{"wrong method", "PUT", "/api/v1/sites", "admin", "{}", 405, "method_not_allowed"},
		{"malformed JSON", "POST", "/api/v1/sites", "admin", `{"name":`, 400, "invalid"},
		{"unknown field", "POST", "/api/v1/sites", "admin", `{"name":"x","wifi_password":"y"}`, 400, "unknown field"},
		{"trailing data", "POST", "/api/v1/sites", "admin", `{"name":"x"} {}`, 400, "trailing"},
		{"invalid site", "POST", "/api/v1/sites", "admin", `{"name":"x","ssid":"s","security":"wpa2-psk","passphrase":"12345678","cidr":"10.0.0.1/24"}`, 400, "host bits"},
		{"duplicate site", "POST", "/api/v1/sites", "admin", `{"name":"hq","ssid":"s","security":"wpa2-psk","passphrase":"12345678","cidr":"10.9.0.0/24"}`, 409, "exists"},
		{"missing site", "GET", "/api/v1/sites/nowhere", "admin", "", 404, `site \"nowhere\": not found`},
		{"rename refused", "PATCH", "/api/v1/sites/hq", "admin", `{"name":"other"}`, 400, "renamed"},
		{"empty batch", "POST", "/api/v1/batches", "admin", `{"rows":[]}`, 400, "empty batch"},
		{"batch into missing site", "POST", "/api/v1/batches", "admin", `{"site":"nowhere","model":"M","rows":[{"serial":"A1","claim_token":"TOKENTOKENTOKEN123"}]}`, 404, "not found"},
		{"bad device cursor", "GET", "/api/v1/devices?after=zzz", "admin", "", 400, "after"},
		{"missing device", "GET", "/api/v1/devices/NOPE", "admin", "", 404, "not_found"},
	}
	token := strings.TrimSpace(readFile(t, env.DataDir+"/admin.token"))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
			switch c.token {
			case "admin":
				req.Header.Set("Authorization", "Bearer "+token)
			case "":
			default:
				req.Header.Set("Authorization", "Bearer "+c.token)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != c.status || !strings.Contains(string(body), c.contains) {
				t.Errorf("%s %s: %d %s, want %d containing %q", c.method, c.path, resp.StatusCode, body, c.status, c.contains)
			}
		})
	}
	// The site's passphrase is never returned.
	var raw []byte
	if err := env.Client.Do(context.Background(), "GET", "/api/v1/sites/hq", nil, &raw); err != nil || strings.Contains(string(raw), "passphrase-hq") {
		t.Errorf("site answer leaks the passphrase: %v %s", err, raw)
	}
	var apiErr *httpapi.APIError
	if err := env.Client.Do(context.Background(), "DELETE", "/api/v1/sites/nowhere", nil, nil); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Errorf("client error mapping: %v", err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := io.ReadAll(must(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func must(t *testing.T, path string) io.Reader {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
