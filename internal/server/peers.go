package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/peers"
	"github.com/provisiond/provisiond/pki"
)

// The HTTPS listener takes any client certificate at the handshake (which
// proves the client holds its key): a device's from provisiond's CA, a
// factory certificate from a manufacturer's, or a replica's. verifyClients
// verifies it against provisiond's CA once per connection and, when it
// chains there, hands the handlers the verified chain (tls.ConnectionState
// .VerifiedChains) as tls.VerifyClientCertIfGiven would have; any other
// certificate reaches them unverified (PeerCertificates), for EST to check
// against the manufacturer CAs.

type peerCheckKey struct{}

type peerCheck struct {
	once   sync.Once
	chains [][]*x509.Certificate
}

// withPeerCheck gives each connection its verification (http.Server.ConnContext).
func withPeerCheck(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, peerCheckKey{}, &peerCheck{})
}

func verifyClients(next http.Handler, roots *x509.CertPool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		pc, _ := r.Context().Value(peerCheckKey{}).(*peerCheck)
		if pc == nil {
			pc = &peerCheck{}
		}
		pc.once.Do(func() { pc.chains = peers.Verify(r.TLS.PeerCertificates, roots) })
		st := *r.TLS
		st.VerifiedChains = pc.chains
		r2 := *r
		r2.TLS = &st
		next.ServeHTTP(w, &r2)
	})
}

// httpsTLS is the HTTPS listener's TLS: devices present their certificate
// (firmware downloads, EST re-enrollment, /device/v1/...), factory
// certificates from manufacturer CAs (EST), or none (a token, HTTP Basic).
// Any is taken at the handshake; verifyClients checks it. The certificate
// request names the CAs of hint, so that a browser offers no certificate
// of another CA to an operator.
func httpsTLS(serverCert *pki.ServerCertificate, hint *caHint, log *slog.Logger) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := serverCert.Get()
			if err != nil {
				log.Error("server certificate renewal failed; presenting the current one", "err", err)
			}
			return c, nil
		}}
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = hint.pool(hello.Context())
		return c, nil
	}
	return cfg
}

// caHint is the pool of CA names the HTTPS listener sends in its
// certificate request: provisiond's CA and the registered manufacturer CAs,
// read again after caHintTTL or when this replica's fleet changed them.
type caHint struct {
	own  *x509.CertPool
	list func(context.Context) ([]devices.FactoryCA, error)
	log  *slog.Logger

	mu   sync.Mutex
	p    *x509.CertPool
	at   time.Time
	kept bool // p is current (invalidate clears it)
}

// caHintTTL bounds how long another replica's new manufacturer CA takes to
// be named in this replica's certificate requests.
const caHintTTL = 10 * time.Second

func (h *caHint) pool(ctx context.Context) *x509.CertPool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.kept && time.Since(h.at) < caHintTTL {
		return h.p
	}
	cas, err := h.list(ctx)
	if err != nil {
		h.log.Warn("manufacturer CAs unreadable; the certificate request names provisiond's CA only", "err", err)
		return h.own
	}
	p := h.own.Clone()
	for _, ca := range cas {
		if c, err := x509.ParseCertificate(ca.CertDER); err == nil {
			p.AddCert(c)
		}
	}
	h.p, h.at, h.kept = p, time.Now(), true
	return p
}

func (h *caHint) invalidate() {
	h.mu.Lock()
	h.kept = false
	h.mu.Unlock()
}

// fleetFront is the fleet as the API serves it: a change to the
// manufacturer CAs renews the HTTPS certificate request's CA names at once.
type fleetFront struct {
	*enroll.Fleet
	changed func()
}

func (f fleetFront) AddFactoryCA(ctx context.Context, a enroll.Actor, spec enroll.FactoryCASpec) (devices.FactoryCA, error) {
	ca, err := f.Fleet.AddFactoryCA(ctx, a, spec)
	f.changed()
	return ca, err
}

func (f fleetFront) RemoveFactoryCA(ctx context.Context, a enroll.Actor, ref string) (devices.FactoryCA, error) {
	ca, err := f.Fleet.RemoveFactoryCA(ctx, a, ref)
	f.changed()
	return ca, err
}
