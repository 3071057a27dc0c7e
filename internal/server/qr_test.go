package server_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/labels"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// POST /api/v1/qr-decode reads a printed label from a camera frame, and
// refuses what is not one with a clear answer.
func TestQRDecode(t *testing.T) {
	t.Parallel() // mostly waiting (timeouts, other processes): overlaps with the other waiting tests
	env := servertest.Start(t)
	minted, err := env.Client.Mint(ctxT(t), "TH1", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	url := minted.Codes[0].URL("https://" + env.Server.HTTPAddr().String())
	dir := t.TempDir()
	if err := labels.WriteAll(dir, []labels.Label{{Serial: minted.Codes[0].Serial, URL: url}}); err != nil {
		t.Fatal(err)
	}
	label, err := os.ReadFile(filepath.Join(dir, minted.Codes[0].Serial+".png"))
	if err != nil {
		t.Fatal(err)
	}
	var blank bytes.Buffer
	png.Encode(&blank, image.NewGray(image.Rect(0, 0, 320, 240)))
	var huge bytes.Buffer // 20 megapixels that compress to a few kilobytes
	png.Encode(&huge, image.NewGray(image.Rect(0, 0, 5000, 4000)))
	var inst, viewer httpapi.TokenCreated
	env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "i", Role: devices.RoleInstaller}, &inst)
	env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "v", Role: devices.RoleViewer}, &viewer)

	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	post := func(token, ct string, body []byte) (int, string, string) {
		req, _ := http.NewRequest("POST", "https://"+env.Server.HTTPAddr().String()+"/api/v1/qr-decode", bytes.NewReader(body))
		req.Header.Set("Content-Type", ct)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			Text  string `json:"text"`
			Error struct{ Code string }
		}
		json.Unmarshal(raw, &out)
		return resp.StatusCode, out.Text, out.Error.Code
	}
	cases := []struct {
		name, token, ct string
		body            []byte
		status          int
		text, code      string
	}{
		{"a printed label", inst.Secret, "image/png", label, 200, url, ""},
		{"a frame without a code", inst.Secret, "image/png", blank.Bytes(), 422, "", "no_code"},
		{"not an image", inst.Secret, "image/png", []byte("PD1:not-a-picture"), 400, "", "invalid"},
		{"text/plain", inst.Secret, "text/plain", label, 415, "", "unsupported_media_type"},
		{"over 4 MiB", inst.Secret, "image/png", bytes.Repeat([]byte{0}, httpapi.MaxFrameBytes+1), 413, "", "too_large"},
		{"a 20-megapixel frame", inst.Secret, "image/png", huge.Bytes(), 413, "", "too_large"},
		{"no token", "", "image/png", label, 401, "", "unauthorized"},
		{"a viewer", viewer.Secret, "image/png", label, 403, "", "forbidden"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, text, code := post(c.token, c.ct, c.body)
			if status != c.status || text != c.text || code != c.code {
				t.Errorf("%d %q %q, want %d %q %q", status, text, code, c.status, c.text, c.code)
			}
		})
	}
	if !strings.HasPrefix(url, "https://") {
		t.Fatal(url)
	}
}
