package httpapi

import (
	"context"
	"net/http"
	"net/netip"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
)

// Access is what token management and server certificates need: the
// enroll.Access workflows.
type Access interface {
	CreateToken(ctx context.Context, a enroll.Actor, name string, role devices.Role, sites []string) (string, devices.Token, error)
	Tokens(ctx context.Context) ([]devices.Token, error)
	RevokeToken(ctx context.Context, a enroll.Actor, id string) error
	IssueServerCert(ctx context.Context, a enroll.Actor, names []string, ips []netip.Addr, lifetime time.Duration) (chainPEM, keyPEM []byte, err error)
}

var _ Access = (*enroll.Access)(nil)

// TokenRequest creates a token.
type TokenRequest struct {
	Name  string       `json:"name"`
	Role  devices.Role `json:"role"`
	Sites []string     `json:"sites,omitempty"` // empty: every site
}

// TokenCreated is the answer: the secret appears here once and is never stored.
type TokenCreated struct {
	devices.Token
	Secret string `json:"token"`
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req TokenRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	secret, t, err := a.access.CreateToken(r.Context(), actor, req.Name, req.Role, req.Sites)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, TokenCreated{Token: t, Secret: secret})
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	ts, err := a.access.Tokens(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	if ts == nil {
		ts = []devices.Token{}
	}
	writeJSON(w, 200, map[string]any{"tokens": ts})
}

func (a *API) deleteToken(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	if err := a.access.RevokeToken(r.Context(), actor, r.PathValue("id")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
