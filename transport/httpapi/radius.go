package httpapi

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/provisiond/provisiond/enroll"
)

// radiusMACAuth answers a RADIUS server's MAC authorisation of a device
// associating with a PSK site (FreeRADIUS's rest module, docs/network.md):
// 200 with the device's passphrase as the reply's Tunnel-Password (RFC
// 2868, which access points use as the device's PSK), in the rest module's
// JSON attribute form; 404 for a MAC that is no enrolled device's, or a
// device that joins with EAP-TLS; 403 for a revoked device; 400 for a
// malformed MAC. The FreeRADIUS configuration rejects all but 200.
func (a *API) radiusMACAuth(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	w.Header().Set("Cache-Control", "no-store")
	mac := r.URL.Query().Get("mac")
	k, err := a.fleet.WiFiKey(r.Context(), actor, mac)
	switch {
	case errors.Is(err, enroll.ErrRevoked):
		writeError(w, http.StatusForbidden, "revoked", fmt.Sprintf("device %s is revoked", k.Device.Serial))
	case errors.Is(err, enroll.ErrUnknownDevice), errors.Is(err, enroll.ErrNoPSK):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case err != nil:
		a.fail(w, err)
	default:
		// do_xlat off: FreeRADIUS would otherwise expand %{...} in a
		// site's passphrase.
		writeJSON(w, http.StatusOK, map[string]restAttr{"reply:Tunnel-Password": {Value: k.Passphrase, Op: ":="}})
	}
}

// restAttr is an attribute in the JSON form of FreeRADIUS's rest module.
type restAttr struct {
	Value  string `json:"value"`
	Op     string `json:"op"`
	DoXlat bool   `json:"do_xlat"`
}
