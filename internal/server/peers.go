package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/handshake"
	"github.com/provisiond/provisiond/internal/peers"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/transport/est"
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

// peerCheck is a connection's: its verified client certificate, and its
// handshake slot until its first answer.
type peerCheck struct {
	once   sync.Once
	chains [][]*x509.Certificate
	slot   atomic.Pointer[handshake.Slot]
}

// httpsGate bounds the HTTPS listener's sessions between a handshake and
// their first answer, as the DTLS and MQTT listeners bound bootstrap
// sessions (package handshake): under an EST boot storm a session waits for
// a slot before its handshake instead of paying for one that the enrollment
// admission limit then refuses. A session keeps its slot until its first
// request other than EST's /cacerts and /csrattrs is answered, it closes, or
// the handshake timeout passes.
type httpsGate struct {
	gate  *handshake.Gate
	conns sync.Map // the TCP connection under each *tls.Conn -> *peerCheck
}

// connContext gives each connection its peerCheck (http.Server.ConnContext).
func (g *httpsGate) connContext(ctx context.Context, c net.Conn) context.Context {
	pc := &peerCheck{}
	if tc, ok := c.(*tls.Conn); ok {
		g.conns.Store(tc.NetConn(), pc)
	}
	return context.WithValue(ctx, peerCheckKey{}, pc)
}

// acquire waits for a slot before a handshake (from GetConfigForClient).
func (g *httpsGate) acquire(hello *tls.ClientHelloInfo) error {
	slot, err := g.gate.Acquire(hello.Context())
	if err != nil {
		return err
	}
	slot.Hold()
	if v, ok := g.conns.Load(hello.Conn); ok {
		v.(*peerCheck).slot.Store(slot)
	} else {
		slot.Release()
	}
	return nil
}

// connState releases a closed connection's slot (http.Server.ConnState).
func (g *httpsGate) connState(c net.Conn, st http.ConnState) {
	if st != http.StateClosed && st != http.StateHijacked {
		return
	}
	if tc, ok := c.(*tls.Conn); ok {
		if v, ok := g.conns.LoadAndDelete(tc.NetConn()); ok {
			v.(*peerCheck).slot.Load().Release()
		}
	}
}

// discovery reports whether r is EST's discovery before an enrollment
// (the session keeps its slot through it).
func discovery(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, est.PathPrefix+"/") &&
		(strings.HasSuffix(r.URL.Path, "/cacerts") || strings.HasSuffix(r.URL.Path, "/csrattrs"))
}

func verifyClients(next http.Handler, roots *x509.CertPool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			if pc, _ := r.Context().Value(peerCheckKey{}).(*peerCheck); pc != nil && !discovery(r) {
				defer pc.slot.Load().Release()
			}
			next.ServeHTTP(w, r)
			return
		}
		pc, _ := r.Context().Value(peerCheckKey{}).(*peerCheck)
		if pc == nil {
			pc = &peerCheck{}
		}
		if !discovery(r) {
			defer pc.slot.Load().Release()
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
func httpsTLS(serverCert *pki.ServerCertificate, hint *caHint, gate *httpsGate, log *slog.Logger) *tls.Config {
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
		if err := gate.acquire(hello); err != nil {
			return nil, err
		}
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
	changed  func()
	endpoint func(serial string) string // the LwM2M endpoint name of a serial
	svc      *enroll.Service
}

// WiFiKey answers a RADIUS server's MAC authorisation; a device of a site
// outside the token's is one it does not know.
func (f fleetFront) WiFiKey(ctx context.Context, a enroll.Actor, mac string) (enroll.WiFiKey, error) {
	k, err := f.svc.WiFiKey(ctx, mac)
	if k.Device.Site != "" && !a.CanSite(k.Device.Site) {
		return enroll.WiFiKey{}, fmt.Errorf("%w: no enrolled device reported MAC %s", enroll.ErrUnknownDevice, mac)
	}
	return k, err
}

func (f fleetFront) LwM2MCredentials(ctx context.Context, a enroll.Actor, id uuid.UUID) (enroll.LwM2MCredentials, error) {
	return f.Fleet.LwM2MCredentials(ctx, a, id, f.endpoint)
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

// newGate is the HTTPS listener's handshake gate, sized as the DTLS and MQTT
// listeners' are: n slots (default handshake.DefaultSlots), a session waits
// up to wait (default 5 s) for one; it holds its slot until its first
// answer, at most hold (the handshake timeout, default 10 s).
func newGate(n int, wait, hold time.Duration) *handshake.Gate {
	if n <= 0 {
		n = handshake.DefaultSlots
	}
	if wait <= 0 {
		wait = 5 * time.Second
	}
	if hold <= 0 {
		hold = 10 * time.Second
	}
	return handshake.NewGate(n, wait, hold)
}
