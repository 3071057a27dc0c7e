package httpapi

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
)

// TokenStore is what token management needs.
type TokenStore interface {
	PutToken(hash []byte, t devices.Token, ev devices.AuditEvent) error
	Tokens() ([]devices.Token, error)
	DeleteToken(id string, ev devices.AuditEvent) error
}

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

// NewTokenSecret returns a fresh bearer token and the hash it is stored under.
func NewTokenSecret() (secret string, hash []byte) {
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	secret = "pvd_" + base64.RawURLEncoding.EncodeToString(raw[:])
	h := sha256.Sum256([]byte(secret))
	return secret, h[:]
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, actor enroll.Actor) {
	var req TokenRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	switch {
	case req.Name == "" || len(req.Name) > 100:
		a.fail(w, fmt.Errorf("%w: name: 1-100 characters", errBadRequest))
		return
	case !devices.ValidRole(req.Role):
		a.fail(w, fmt.Errorf("%w: role: admin, operator, installer or viewer", errBadRequest))
		return
	}
	for _, s := range req.Sites {
		if _, err := a.inv.Site(s); err != nil {
			a.fail(w, fmt.Errorf("sites: %w", err))
			return
		}
	}
	secret, hash := NewTokenSecret()
	t := devices.Token{ID: uuid.NewString()[:8], Name: req.Name, Role: req.Role, Sites: req.Sites,
		CreatedAt: time.Now().UTC(), CreatedBy: actor.Name}
	if err := a.tokens.PutToken(hash, t, devices.AuditEvent{Actor: actor.Name, Action: "token.create", Target: t.ID,
		Source: actor.Source, Detail: map[string]string{"role": string(t.Role), "name": t.Name, "sites": fmt.Sprint(t.Sites)}}); err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, TokenCreated{Token: t, Secret: secret})
}

func (a *API) listTokens(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	ts, err := a.tokens.Tokens()
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
	id := r.PathValue("id")
	if "token:"+id == actor.Name {
		writeError(w, http.StatusConflict, "in_use", "a token cannot revoke itself; use another admin token")
		return
	}
	if err := a.tokens.DeleteToken(id, devices.AuditEvent{Actor: actor.Name, Action: "token.revoke", Target: id, Source: actor.Source}); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
