package httpapi

import (
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/provisiond/provisiond/enroll"
)

// ServerCertRequest asks for a server certificate (and a fresh key) for a
// service devices reach, such as an external MQTT broker.
type ServerCertRequest struct {
	Names    []string `json:"names"`              // DNS names; the first is the common name
	IPs      []string `json:"ips,omitempty"`      // IP addresses
	Lifetime string   `json:"lifetime,omitempty"` // Go duration, default 8760h (1 year), at most 87600h
}

// ServerCertResponse carries the chain (leaf, intermediate) and the key, both
// PEM. The key is generated for this answer and not kept by provisiond.
type ServerCertResponse struct {
	Certificate string `json:"certificate"`
	Key         string `json:"key"`
	CA          string `json:"ca"` // the root, for the service's own client-certificate checks
}

func (a *API) issueServerCert(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req ServerCertRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if len(req.Names) == 0 && len(req.IPs) == 0 {
		a.fail(w, fmt.Errorf("%w: names or ips: at least one", errBadRequest))
		return
	}
	for _, n := range req.Names {
		if n == "" || len(n) > 253 {
			a.fail(w, fmt.Errorf("%w: names: %q is not a host name", errBadRequest, n))
			return
		}
	}
	var ips []netip.Addr
	for _, s := range req.IPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			a.fail(w, fmt.Errorf("%w: ips: %q is not an IP address", errBadRequest, s))
			return
		}
		ips = append(ips, ip)
	}
	life := 365 * 24 * time.Hour
	if req.Lifetime != "" {
		d, err := time.ParseDuration(req.Lifetime)
		if err != nil || d < time.Hour || d > 10*365*24*time.Hour {
			a.fail(w, fmt.Errorf("%w: lifetime: a duration between 1h and 87600h", errBadRequest))
			return
		}
		life = d
	}
	chain, key, err := a.access.IssueServerCert(r.Context(), actor, req.Names, ips, life)
	if err != nil {
		a.fail(w, err)
		return
	}
	a.log.Info("server certificate issued", "names", req.Names, "ips", req.IPs, "actor", actor.Name)
	writeJSON(w, http.StatusCreated, ServerCertResponse{Certificate: string(chain), Key: string(key), CA: a.info().RootCA})
}

// WriteFiles writes an issued server certificate into dir (created 0700):
// server.pem (the certificate and provisiond's intermediate), server.key
// (0600) and ca.pem (the root). For a RADIUS server (radius) also
// client-ca.pem, the CAs a device certificate chains to (the intermediate,
// then the root), and an empty directory empty/, so that FreeRADIUS's
// EAP-TLS trusts those and nothing else (docs/radius).
func (r ServerCertResponse) WriteFiles(dir string, radius bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := []struct {
		name, data string
		mode       os.FileMode
	}{{"server.key", r.Key, 0o600}, {"server.pem", r.Certificate, 0o644}, {"ca.pem", r.CA, 0o644}}
	if radius {
		rest := []byte(r.Certificate)
		var chain []byte
		for first := true; ; first = false {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if !first {
				chain = append(chain, pem.EncodeToMemory(b)...)
			}
		}
		if len(chain) == 0 {
			return errors.New("server certificate: the answer carries no intermediate")
		}
		files = append(files, struct {
			name, data string
			mode       os.FileMode
		}{"client-ca.pem", string(chain) + r.CA, 0o644})
		if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o755); err != nil {
			return err
		}
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	return nil
}
