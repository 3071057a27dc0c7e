package server_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
)

// FuzzAPIRequestBodies sends arbitrary bodies to every ops API route that
// takes one, as an admin. Whatever the body, the answer is a success or a
// 4xx with a JSON error naming a code: never a 5xx, never a crash.
func FuzzAPIRequestBodies(f *testing.F) {
	env := servertest.Start(f)
	env.Site("hq", "10.70.0.0/24")
	env.Mint(2, "hq")
	routes := []struct{ method, path string }{
		{"POST", "/api/v1/sites"},
		{"PATCH", "/api/v1/sites/hq"},
		{"POST", "/api/v1/batches"},
		{"POST", "/api/v1/claims"},
		{"PATCH", "/api/v1/devices/config"},
		{"POST", "/api/v1/revocations"},
		{"POST", "/api/v1/tokens"},
		{"POST", "/api/v1/server-certificates"},
	}
	seeds := []string{
		`{"name":"s1","ssid":"x","security":"wpa2-psk","passphrase":"12345678","cidr":"10.1.0.0/24"}`,
		`{"ssid":"new","dns":["192.0.2.1"],"lease":"1h"}`,
		`{"model":"M","site":"hq","devices":[{"serial":"A1","token_hash":"` + strings.Repeat("ab", 32) + `"}]}`,
		`{"code":"PD1:X:Y:Z","site":"hq"}`,
		`{"site":"hq","override":{"ssid":"o","passphrase":"12345678"}}`,
		`{"devices":["nope"],"reason":"r"}`,
		`{"name":"t","role":"viewer","sites":["hq"]}`,
		`{"names":["broker.example"]}`,
		`null`, `[]`, `{"name":` + strings.Repeat("[", 100),
	}
	for i, s := range seeds {
		f.Add(uint8(i), []byte(s))
	}
	token, err := os.ReadFile(filepath.Join(env.DataDir, server.AdminTokenFile))
	if err != nil {
		f.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(env.Server.CA().Root())
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + env.Server.HTTPAddr().String()
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		r := routes[int(route)%len(routes)]
		req, err := http.NewRequest(r.method, base+r.path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, r.path, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode >= 500:
			t.Fatalf("%s %s with %q: %d %s", r.method, r.path, body, resp.StatusCode, raw)
		case resp.StatusCode >= 400:
			var eb struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(raw, &eb); err != nil || eb.Error.Code == "" || eb.Error.Message == "" {
				t.Fatalf("%s %s: %d without a JSON error: %q", r.method, r.path, resp.StatusCode, raw)
			}
		}
	})
}
