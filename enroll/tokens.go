package enroll

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// TokenStore is the part of the inventory that API tokens and the
// certificates of other services need.
type TokenStore interface {
	PutToken(ctx context.Context, hash []byte, t devices.Token, ev devices.AuditEvent) error
	PutTokenOnce(ctx context.Context, hash []byte, t devices.Token, ev devices.AuditEvent) (bool, error)
	TokenByHash(ctx context.Context, hash []byte) (devices.Token, error)
	Tokens(ctx context.Context) ([]devices.Token, error)
	DeleteToken(ctx context.Context, id string, ev devices.AuditEvent) error
	Site(ctx context.Context, name string) (devices.Site, error)
	RecordServerCert(ctx context.Context, c devices.ServerCert, ev devices.AuditEvent) error
}

// ServerSigner issues certificates for the services around provisiond.
type ServerSigner interface {
	IssueServerPEM(names []string, ips []netip.Addr, lifetime time.Duration) (chainPEM, keyPEM []byte, err error)
}

// ErrTokenInUse is returned when a token would revoke itself.
var ErrTokenInUse = errors.New("a token cannot revoke itself; use another admin token")

// Access runs the changes to who may use the API and which services
// provisiond's CA vouches for: API tokens and server certificates, each
// change with its audit event in one transaction.
type Access struct {
	store  TokenStore
	signer ServerSigner
}

// NewAccess returns the token and server-certificate workflows.
func NewAccess(store TokenStore, signer ServerSigner) *Access {
	return &Access{store: store, signer: signer}
}

// NewTokenSecret returns a fresh bearer token and the hash it is stored under.
func NewTokenSecret() (secret string, hash []byte) {
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	secret = "pvd_" + base64.RawURLEncoding.EncodeToString(raw[:])
	return secret, HashTokenSecret(secret)
}

// HashTokenSecret is what a token is stored and looked up under.
func HashTokenSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// CreateToken mints an API token for name with a role, limited to sites
// when given (they must exist). The secret is returned once and never stored.
func (x *Access) CreateToken(ctx context.Context, a Actor, name string, role devices.Role, sites []string) (string, devices.Token, error) {
	secret, _ := NewTokenSecret()
	t, err := x.putToken(ctx, a, secret, name, role, sites)
	return secret, t, err
}

// EnsureToken stores a token under a secret the caller holds (the bootstrap
// admin token kept in the data directory) unless one is stored already.
func (x *Access) EnsureToken(ctx context.Context, a Actor, secret, name string, role devices.Role) (devices.Token, error) {
	t, err := x.store.TokenByHash(ctx, HashTokenSecret(secret))
	if err == nil || !errors.Is(err, devices.ErrNotFound) {
		return t, err
	}
	return x.putToken(ctx, a, secret, name, role, nil)
}

// EnsureTokenOnce is EnsureToken for a token a cluster has one of (the
// bootstrap admin token): when the secret is unknown and a token of that
// name exists (another replica made it), it stores nothing and returns false.
func (x *Access) EnsureTokenOnce(ctx context.Context, a Actor, secret, name string, role devices.Role) (bool, error) {
	_, err := x.store.TokenByHash(ctx, HashTokenSecret(secret))
	if err == nil || !errors.Is(err, devices.ErrNotFound) {
		return false, err
	}
	t := devices.Token{ID: uuid.NewString()[:8], Name: name, Role: role, CreatedAt: time.Now().UTC(), CreatedBy: a.Name}
	return x.store.PutTokenOnce(ctx, HashTokenSecret(secret), t,
		a.event("token.create", t.ID, map[string]string{"role": string(role), "name": name}))
}

func (x *Access) putToken(ctx context.Context, a Actor, secret, name string, role devices.Role, sites []string) (devices.Token, error) {
	switch {
	case name == "" || len(name) > 100:
		return devices.Token{}, fmt.Errorf("%w: name: 1-100 characters", ErrInvalid)
	case !devices.ValidRole(role):
		return devices.Token{}, fmt.Errorf("%w: role: admin, operator, installer, viewer or radius", ErrInvalid)
	}
	for _, s := range sites {
		if _, err := x.store.Site(ctx, s); err != nil {
			return devices.Token{}, fmt.Errorf("sites: %w", err)
		}
	}
	t := devices.Token{ID: uuid.NewString()[:8], Name: name, Role: role, Sites: slices.Clone(sites),
		CreatedAt: time.Now().UTC(), CreatedBy: a.Name}
	detail := map[string]string{"role": string(role), "name": name}
	if len(sites) > 0 {
		detail["sites"] = fmt.Sprint(sites)
	}
	return t, x.store.PutToken(ctx, HashTokenSecret(secret), t, a.event("token.create", t.ID, detail))
}

// Tokens lists the API tokens (never their secrets, which are not stored).
func (x *Access) Tokens(ctx context.Context) ([]devices.Token, error) { return x.store.Tokens(ctx) }

// RevokeToken deletes a token; an actor cannot revoke the token it uses.
func (x *Access) RevokeToken(ctx context.Context, a Actor, id string) error {
	if "token:"+id == a.Name {
		return ErrTokenInUse
	}
	return x.store.DeleteToken(ctx, id, a.event("token.revoke", id, nil))
}

// IssueServerCert issues a server certificate (for an external MQTT broker,
// a RADIUS server) and records it in the inventory with its audit event, so
// that OCSP answers for it; a certificate whose record fails is not handed
// out.
func (x *Access) IssueServerCert(ctx context.Context, a Actor, names []string, ips []netip.Addr, lifetime time.Duration) (chainPEM, keyPEM []byte, err error) {
	if len(names) == 0 && len(ips) == 0 {
		return nil, nil, fmt.Errorf("%w: names: at least one name or IP address", ErrInvalid)
	}
	for _, n := range names {
		if !ValidDNSName(n) {
			return nil, nil, fmt.Errorf("%w: names: %q is not a DNS name", ErrInvalid, n)
		}
	}
	chainPEM, keyPEM, err = x.signer.IssueServerPEM(names, ips, lifetime)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		return nil, nil, errors.New("issue server certificate: no certificate in the chain")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("issue server certificate: %w", err)
	}
	var ipText []string
	for _, ip := range ips {
		ipText = append(ipText, ip.String())
	}
	c := devices.ServerCert{Serial: fmt.Sprintf("%x", leaf.SerialNumber), Names: slices.Clone(names), IPs: ipText,
		NotAfter: leaf.NotAfter.UTC(), IssuedAt: time.Now().UTC(), IssuedBy: a.Name}
	ev := a.event("cert.issue-server", fmt.Sprint(names), map[string]string{"ips": fmt.Sprint(ipText),
		"lifetime": lifetime.String(), "cert_serial": c.Serial})
	if err := x.store.RecordServerCert(ctx, c, ev); err != nil {
		return nil, nil, err
	}
	return chainPEM, keyPEM, nil
}

// ValidDNSName reports whether n is a host name a server certificate may
// carry: dot-separated labels of letters, digits and hyphens (not at either
// end), 1-63 bytes each, 253 in all, the first label possibly "*".
func ValidDNSName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for i, l := range strings.Split(strings.TrimSuffix(n, "."), ".") {
		if l == "*" && i == 0 {
			continue
		}
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
