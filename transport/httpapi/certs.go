package httpapi

import (
	"fmt"
	"net/http"
	"net/netip"
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
