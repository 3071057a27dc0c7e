// Package coap serves the bootstrap protocol over CoAP: DTLS on UDP (the
// default, port 5684) and, only when explicitly enabled for development,
// plain CoAP on UDP. It maps CoAP messages to package bootstrap and its
// outcomes to CoAP response codes, Content-Format and Max-Age.
//
// Resources: POST /enroll (claim token + CSR -> certificate, config, lease),
// GET /ca (the root certificate) and POST /lease (renewal; needs the device's
// certificate on the DTLS session). docs/protocol.md is the reference.
//
// Client certificates are optional at the handshake, so one port serves
// bootstrap (server-authenticated DTLS) and enrolled devices (mutual DTLS).
// A presented certificate is verified against the CA and checked against the
// inventory during the handshake: an unknown, revoked or superseded device
// certificate fails the handshake.
package coap

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	dtlsserver "github.com/plgd-dev/go-coap/v3/dtls/server"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"
	udpserver "github.com/plgd-dev/go-coap/v3/udp/server"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/handshake"
	"github.com/provisiond/provisiond/internal/peers"
	"github.com/provisiond/provisiond/transport/bootstrap"
	"github.com/provisiond/provisiond/transport/wire"
)

// MediaPKIXCert is the CoAP content-format of a DER certificate (RFC 9148).
const MediaPKIXCert message.MediaType = 287

// CipherSuites are the DTLS suites offered, strongest first. pion's default
// list lacks the CCM suites, but RFC 7252 section 9.1.3.3 makes
// TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 mandatory for CoAP devices using
// certificates, and constrained firmware often offers nothing else.
var CipherSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
	piondtls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
}

// PSKCipherSuites are added when the listener takes bootstrap PSKs: LwM2M
// makes TLS_PSK_WITH_AES_128_CCM_8 mandatory for PSK mode, and constrained
// clients (Zephyr, Wakaama on tinydtls) offer little else.
var PSKCipherSuites = []piondtls.CipherSuiteID{
	piondtls.TLS_PSK_WITH_AES_128_GCM_SHA256,
	piondtls.TLS_PSK_WITH_AES_128_CCM,
	piondtls.TLS_PSK_WITH_AES_128_CCM_8,
}

// Authorizer decides whether a verified device certificate may connect.
type Authorizer func(ctx context.Context, id uuid.UUID, certSerial string) error

// Config configures the CoAP listeners.
type Config struct {
	SecureAddr string // DTLS listen address, e.g. ":5684"; empty disables
	// ExtraSecureAddrs are more DTLS listeners serving the same resources
	// with the same sessions, gate and checks (a separate port for LwM2M
	// bootstrap, say); used only with SecureAddr.
	ExtraSecureAddrs []string
	InsecureAddr     string                           // plain CoAP address; empty (the default) disables
	Certificate      func() (*tls.Certificate, error) // server chain and key for DTLS, asked at every handshake
	ClientCAs        *x509.CertPool                   // verifies device certificates
	Authorize        Authorizer                       // checks a device certificate against the inventory
	// Factory checks a client certificate that provisiond's CA did not
	// issue: a factory certificate (IDevID, leaf first) under a registered
	// manufacturer CA. A session it accepts is a bootstrap session whose
	// certificate authenticates the device in place of a claim token
	// (FactoryPeer); nil refuses every certificate from another CA.
	Factory func(ctx context.Context, chain []*x509.Certificate) error
	// BootstrapPSK returns the pre-shared key of a PSK identity (an LwM2M
	// bootstrap PSK), or an error that fails the handshake; nil: the
	// listener offers no PSK cipher suites. A session it accepts is
	// authenticated as that identity (PSKPeer).
	BootstrapPSK     func(ctx context.Context, identity string) ([]byte, error)
	HandshakeTimeout time.Duration // default 10s
	IdleTimeout      time.Duration // close DTLS sessions idle this long; default 60s

	// MaxHandshakes bounds DTLS handshakes in progress (default 64); a new
	// session waits up to HandshakeQueueWait (default 5s) for a slot and is
	// then dropped silently, so that a boot storm cannot starve every
	// handshake of CPU.
	MaxHandshakes      int
	HandshakeQueueWait time.Duration

	// What the device-facing resources serve; nil leaves a resource
	// answering 4.04 (or 5.01 for state reports).
	CRL          func() []byte                                                                     // GET /crl: the current DER CRL
	ConfigSource func(ctx context.Context, id uuid.UUID) (enroll.DeviceConfig, error)              // GET /config (with Observe)
	Report       func(ctx context.Context, id uuid.UUID, rep enroll.StateReport, src string) error // POST /state
	Firmware     FirmwareImages                                                                    // GET /fw/{digest}, block-wise
	// Observe hears every enrollment request's result and duration (metrics).
	Observe func(transport, result string, d time.Duration)

	// Resources are handlers mounted from outside (another front end, such
	// as EST-coaps): each on the DTLS listener, and on plain CoAP too when
	// Insecure says so. A handler finds the device's verified identity with
	// Peer.
	Resources []Resource
}

// Resource is a CoAP resource a front end mounts on the listeners.
type Resource struct {
	Path     string // e.g. "/.well-known/est/sen"; go-coap's mux patterns
	Handler  mux.Handler
	Insecure bool // also on plain CoAP (development only)
	// Link is the resource's attributes in /.well-known/core (RFC 6690),
	// e.g. `rt="ace.est.sen";ct="281 287"`; empty: not listed.
	Link string
}

// Peer returns the device identity the DTLS session of w was authenticated
// with (a device certificate from provisiond's CA), or false on a session
// without one.
func Peer(w mux.ResponseWriter) (id uuid.UUID, certSerial string, ok bool) {
	p, ok := w.Conn().Context().Value(peerKey{}).(peer)
	return p.id, p.certSerial, ok
}

// FactoryPeer returns the factory certificate chain (leaf first) the DTLS
// session of w was authenticated with, verified against the registered
// manufacturer CAs at the handshake, or false.
func FactoryPeer(w mux.ResponseWriter) ([]*x509.Certificate, bool) {
	fp, ok := w.Conn().Context().Value(peerKey{}).(factoryPeer)
	return fp.chain, ok
}

// factoryPeer is a session authenticated by a factory certificate.
type factoryPeer struct{ chain []*x509.Certificate }

// rekeyKey marks a session whose EST-coaps enrollment may give its
// provisioned device a new certificate (AllowRekey).
type rekeyKey struct{}

// AllowRekey marks the session: its device, provisioned, may enroll again
// on it for a new certificate (an LwM2M bootstrap in EST mode that let the
// device have a new identity, before its Finish).
func AllowRekey(cc *udpclient.Conn) { cc.SetContextValue(rekeyKey{}, true) }

// RekeyAllowed says whether the session of w was marked by AllowRekey.
func RekeyAllowed(w mux.ResponseWriter) bool {
	v, _ := w.Conn().Context().Value(rekeyKey{}).(bool)
	return v
}

// pskPeer is a session authenticated by a bootstrap PSK.
type pskPeer struct{ identity string }

// PSKPeer returns the PSK identity the DTLS session of w was authenticated
// with (Config.BootstrapPSK), or false.
func PSKPeer(w mux.ResponseWriter) (string, bool) {
	p, ok := w.Conn().Context().Value(peerKey{}).(pskPeer)
	return p.identity, ok
}

// Server is the CoAP front end.
type Server struct {
	verified peers.Verdicts // verifyPeer's findings, for OnNewConn
	cfg      Config
	log      *slog.Logger
	secure   *bootstrap.Handler
	insecure *bootstrap.Handler
	root     []byte // DER
	// life is the context of checks made where go-coap and pion give none
	// (the handshake's certificate check); Shutdown cancels it.
	life context.Context
	stop context.CancelFunc

	obs observers

	mu        sync.Mutex
	sessions  map[uuid.UUID]map[*udpclient.Conn]struct{} // mutual-DTLS sessions per device
	gate      *handshake.Gate
	dtls      []*dtlsserver.Server
	udp       *udpserver.Server
	dtlsAddr  net.Addr   // SecureAddr's
	extraAddr []net.Addr // ExtraSecureAddrs'
	udpAddr   net.Addr
	wg        sync.WaitGroup
	stopped   bool
	serveErrs chan error
}

// New returns a server; Start binds it.
func New(cfg Config, enroller bootstrap.Enroller, root *x509.Certificate, log *slog.Logger) *Server {
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = handshake.DefaultSlots
	}
	if cfg.HandshakeQueueWait <= 0 {
		cfg.HandshakeQueueWait = 5 * time.Second
	}
	life, stop := context.WithCancel(context.Background())
	return &Server{
		life:      life,
		stop:      stop,
		cfg:       cfg,
		log:       log,
		secure:    &bootstrap.Handler{Enroller: enroller, Transport: "coaps", Log: log, Observe: cfg.Observe},
		insecure:  &bootstrap.Handler{Enroller: enroller, Transport: "coap", Log: log, Observe: cfg.Observe},
		root:      root.Raw,
		sessions:  map[uuid.UUID]map[*udpclient.Conn]struct{}{},
		gate:      handshake.NewGate(cfg.MaxHandshakes, cfg.HandshakeQueueWait, cfg.HandshakeQueueWait),
		serveErrs: make(chan error, 2),
	}
}

// Sessions counts live mutual-DTLS device sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.sessions {
		n += len(m)
	}
	return n
}

// DeviceIDs lists the devices that hold a mutual-DTLS session here now.
func (s *Server) DeviceIDs() []uuid.UUID {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]uuid.UUID, 0, len(s.sessions))
	for id := range s.sessions {
		ids = append(ids, id)
	}
	return ids
}

// Handshakes reports the DTLS handshake gate.
func (s *Server) Handshakes() handshake.Stats { return s.gate.Stats() }

// CutDevice closes every DTLS session authenticated with the device's
// certificate (after revocation). New handshakes are refused by Authorize.
func (s *Server) CutDevice(id uuid.UUID) {
	s.mu.Lock()
	conns := s.sessions[id]
	delete(s.sessions, id)
	s.mu.Unlock()
	for cc := range conns {
		_ = cc.Close()
	}
}

func (s *Server) track(id uuid.UUID, cc *udpclient.Conn) {
	s.mu.Lock()
	if s.sessions[id] == nil {
		s.sessions[id] = map[*udpclient.Conn]struct{}{}
	}
	s.sessions[id][cc] = struct{}{}
	s.mu.Unlock()
	cc.AddOnClose(func() {
		s.mu.Lock()
		delete(s.sessions[id], cc)
		if len(s.sessions[id]) == 0 {
			delete(s.sessions, id)
		}
		s.mu.Unlock()
	})
}

type peerKey struct{}

// peer is the verified identity of a device on a mutual-DTLS session.
type peer struct {
	id         uuid.UUID
	certSerial string
	leaf       *x509.Certificate
}

// PeerCertificate returns the device certificate the DTLS session of w was
// authenticated with (provisiond's), or false.
func PeerCertificate(w mux.ResponseWriter) (*x509.Certificate, bool) {
	p, ok := w.Conn().Context().Value(peerKey{}).(peer)
	return p.leaf, ok && p.leaf != nil
}

// Source is where the request of w came from.
func Source(w mux.ResponseWriter) netip.AddrPort { return sourceOf(w) }

// Start binds the configured listeners and serves them in the background.
func (s *Server) Start() error {
	if s.cfg.SecureAddr != "" {
		for _, addr := range append([]string{s.cfg.SecureAddr}, s.cfg.ExtraSecureAddrs...) {
			if err := s.startDTLS(addr); err != nil {
				s.Shutdown(context.Background())
				return err
			}
		}
	}
	if s.cfg.InsecureAddr != "" {
		if err := s.startUDP(); err != nil {
			s.Shutdown(context.Background())
			return err
		}
	}
	return nil
}

func (s *Server) router(h *bootstrap.Handler) *mux.Router {
	r := mux.NewRouter()
	r.DefaultHandle(mux.HandlerFunc(func(w mux.ResponseWriter, _ *mux.Message) {
		_ = w.SetResponse(codes.NotFound, message.TextPlain, bytes.NewReader([]byte("no such resource; see /enroll, /ca, /lease")))
	}))
	_ = r.Handle("/enroll", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) { s.enroll(h, w, m) }))
	_ = r.Handle("/ca", mux.HandlerFunc(s.ca))
	_ = r.Handle("/crl", mux.HandlerFunc(s.getCRL))
	_ = r.Handle("/config", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) { s.getConfig(h, w, m) }))
	_ = r.Handle("/state", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) { s.postState(h, w, m) }))
	_ = r.Handle("/renew", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) { s.renew(h, w, m) }))
	_ = r.Handle("/lease", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) { s.lease(h, w, m) }))
	_ = r.Handle("/fw/{digest}", mux.HandlerFunc(s.getFirmware))
	links := []string{"</enroll>;ct=\"60 50\"", "</ca>", "</crl>", "</config>;obs", "</state>", "</renew>", "</lease>"}
	for _, res := range s.cfg.Resources {
		if h == s.secure || res.Insecure {
			_ = r.Handle(res.Path, res.Handler)
			if res.Link != "" {
				links = append(links, "<"+res.Path+">;"+res.Link)
			}
		}
	}
	core := []byte(strings.Join(links, ","))
	_ = r.Handle("/.well-known/core", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) {
		if m.Code() != codes.GET {
			methodNotAllowed(w, "GET")
			return
		}
		_ = w.SetResponse(codes.Content, message.AppLinkFormat, bytes.NewReader(core))
	}))
	return r
}

func (s *Server) startDTLS(addr string) error {
	cfg := &piondtls.Config{
		GetCertificate: func(*piondtls.ClientHelloInfo) (*tls.Certificate, error) {
			c, err := s.cfg.Certificate()
			if err != nil {
				s.log.Error("server certificate renewal failed; presenting the current one", "err", err)
			}
			return c, nil
		},
		CipherSuites:         CipherSuites,
		ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret,
		// Any client certificate is taken at the handshake (pion checks
		// the CertificateVerify signature: the device holds the key);
		// verifyPeer accepts provisiond's devices and registered
		// manufacturers' factory certificates.
		ClientAuth:            piondtls.RequestClientCert,
		VerifyPeerCertificate: s.verifyPeer,
	}
	if s.cfg.BootstrapPSK != nil {
		cfg.CipherSuites = append(append([]piondtls.CipherSuiteID(nil), CipherSuites...), PSKCipherSuites...)
		cfg.PSK = func(identity []byte) ([]byte, error) {
			key, err := s.cfg.BootstrapPSK(s.life, string(identity))
			if err != nil {
				s.log.Info("PSK identity refused at handshake", "identity", fmt.Sprintf("%.64q", identity), "err", err)
			}
			return key, err
		}
	}
	l, err := coapnet.NewDTLSListener("udp", addr, cfg)
	if err != nil {
		return fmt.Errorf("listen coaps %s: %w", addr, err)
	}
	srv := coapdtls.NewServer(
		options.WithMux(s.router(s.secure)),
		options.WithDTLSHandshakeTimeout(s.cfg.HandshakeTimeout),
		options.WithInactivityMonitor(s.cfg.IdleTimeout, func(cc *udpclient.Conn) { _ = cc.Close() }),
		options.WithOnNewConn(func(cc *udpclient.Conn) {
			dc, ok := cc.NetConn().(dtlsState)
			if !ok {
				return
			}
			st, ok := dc.ConnectionState()
			if ok && len(st.PeerCertificates) == 0 && st.IdentityHint != nil && s.cfg.BootstrapPSK != nil {
				cc.SetContextValue(peerKey{}, pskPeer{identity: string(st.IdentityHint)})
				return
			}
			if !ok || len(st.PeerCertificates) == 0 {
				return
			}
			switch p := s.verified.Take(st.PeerCertificates[0]).(type) {
			case peer:
				cc.SetContextValue(peerKey{}, p)
				s.track(p.id, cc)
			case factoryPeer:
				cc.SetContextValue(peerKey{}, p)
			}
		}),
		options.WithErrors(func(err error) { s.log.Debug("coaps", "err", err) }),
	)
	s.mu.Lock()
	s.dtls = append(s.dtls, srv)
	if s.dtlsAddr == nil {
		s.dtlsAddr = l.Addr()
	} else {
		s.extraAddr = append(s.extraAddr, l.Addr())
	}
	s.mu.Unlock()
	s.wg.Go(func() {
		bootstrap := func(leaf []byte) bool { _, ok := s.verified.Peek(leaf).(factoryPeer); return ok }
		if err := srv.Serve(&gatedListener{inner: l, gate: s.gate, bootstrap: bootstrap}); err != nil {
			s.serveErrs <- fmt.Errorf("serve coaps: %w", err)
		}
	})
	s.log.Info("CoAP over DTLS listening", "addr", l.Addr().String())
	return nil
}

func (s *Server) startUDP() error {
	l, err := coapnet.NewListenUDP("udp", s.cfg.InsecureAddr)
	if err != nil {
		return fmt.Errorf("listen coap %s: %w", s.cfg.InsecureAddr, err)
	}
	srv := udp.NewServer(
		options.WithMux(s.router(s.insecure)),
		options.WithErrors(func(err error) { s.log.Debug("coap", "err", err) }),
	)
	s.mu.Lock()
	s.udp, s.udpAddr = srv, l.LocalAddr()
	s.mu.Unlock()
	s.wg.Go(func() {
		defer l.Close()
		if err := srv.Serve(l); err != nil {
			s.serveErrs <- fmt.Errorf("serve coap: %w", err)
		}
	})
	s.log.Warn("plain CoAP (no DTLS) listening: development only, claim tokens travel in clear", "addr", l.LocalAddr().String())
	return nil
}

// SecureAddr is the bound DTLS address, nil when disabled.
func (s *Server) SecureAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dtlsAddr
}

// ExtraSecureAddrs are the bound addresses of Config.ExtraSecureAddrs.
func (s *Server) ExtraSecureAddrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.extraAddr)
}

// InsecureAddr is the bound plain CoAP address, nil when disabled.
func (s *Server) InsecureAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.udpAddr
}

// Err reports a listener that stopped on its own.
func (s *Server) Err() <-chan error { return s.serveErrs }

// Shutdown stops the listeners and waits for them, at most until ctx ends.
// It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	s.stop()
	for _, d := range s.dtls {
		d.Stop()
	}
	if s.udp != nil {
		s.udp.Stop()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sourceOf(w mux.ResponseWriter) netip.AddrPort {
	if ua, ok := w.Conn().RemoteAddr().(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(w.Conn().RemoteAddr().String())
	return ap
}

func reply(w mux.ResponseWriter, a bootstrap.Answer) {
	cf := message.TextPlain
	if a.Format != 0 {
		cf = message.MediaType(a.Format)
	}
	var opts []message.Option
	if a.RetryAfter > 0 {
		secs := uint32(min(a.RetryAfter/time.Second, 1<<31))
		buf := make([]byte, 4)
		n, _ := message.EncodeUint32(buf, secs)
		opts = append(opts, message.Option{ID: message.MaxAge, Value: buf[:n]})
	}
	_ = w.SetResponse(coapCode(a.Status), cf, bytes.NewReader(a.Body), opts...)
}

func coapCode(s bootstrap.Status) codes.Code {
	switch s {
	case bootstrap.Created:
		return codes.Created
	case bootstrap.Changed:
		return codes.Changed
	case bootstrap.BadRequest:
		return codes.BadRequest
	case bootstrap.Unauthorized:
		return codes.Unauthorized
	case bootstrap.Forbidden:
		return codes.Forbidden
	case bootstrap.NotFound:
		return codes.NotFound
	case bootstrap.TooLarge:
		return codes.RequestEntityTooLarge
	case bootstrap.UnsupportedFormat:
		return codes.UnsupportedMediaType
	case bootstrap.TooManyRequests:
		return codes.TooManyRequests
	case bootstrap.Unavailable:
		return codes.ServiceUnavailable
	}
	return codes.InternalServerError
}

func methodNotAllowed(w mux.ResponseWriter, allowed string) {
	_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, bytes.NewReader([]byte("use "+allowed)))
}

// readBody reads at most limit+1 bytes so that an oversized body is detected
// without being read whole.
func readBody(m *mux.Message, limit int) ([]byte, error) {
	if m.Body() == nil {
		return nil, nil
	}
	if n, err := m.BodySize(); err == nil && n > int64(limit) {
		return nil, errTooLarge
	}
	b, err := io.ReadAll(io.LimitReader(m.Body(), int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, errTooLarge
	}
	return b, nil
}

var (
	errTooLarge = errors.New("too large")
)

func (s *Server) enroll(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.POST {
		methodNotAllowed(w, "POST")
		return
	}
	cf, err := m.ContentFormat()
	if err != nil {
		reply(w, bootstrap.Answer{Status: bootstrap.UnsupportedFormat, Body: []byte("content-format required: 60 (CBOR) or 50 (JSON)")})
		return
	}
	f := wire.Format(cf)
	body, err := readBody(m, wire.MaxRequestBytes)
	switch {
	case errors.Is(err, errTooLarge) && (f == wire.JSON || f == wire.CBOR):
		reply(w, h.TooLarge(f))
		return
	case errors.Is(err, errTooLarge):
		body = nil // the handler answers 4.15 for the format first
	case err != nil:
		reply(w, bootstrap.Answer{Status: bootstrap.BadRequest, Body: []byte("cannot read body")})
		return
	}
	ctx := m.Context()
	if chain, ok := FactoryPeer(w); ok { // an IDevID in place of the claim token
		ctx = bootstrap.WithFactory(ctx, chain)
	}
	reply(w, h.Enroll(ctx, f, body, sourceOf(w)))
	enrolled(w.Conn().NetConn())

}

func (s *Server) ca(w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		methodNotAllowed(w, "GET")
		return
	}
	accept, err := m.Accept()
	if err != nil {
		accept = MediaPKIXCert
	}
	switch accept {
	case MediaPKIXCert:
		_ = w.SetResponse(codes.Content, MediaPKIXCert, bytes.NewReader(s.root))
	case message.AppJSON, message.AppCBOR:
		body, err := wire.Marshal(wire.Format(accept), struct {
			CA wire.Cert `json:"ca" cbor:"ca"`
		}{s.root})
		if err != nil {
			reply(w, bootstrap.Answer{Status: bootstrap.Internal, Body: []byte("internal error")})
			return
		}
		_ = w.SetResponse(codes.Content, accept, bytes.NewReader(body))
	default:
		_ = w.SetResponse(codes.NotAcceptable, message.TextPlain, bytes.NewReader([]byte("accept 287 (DER), 50 (JSON) or 60 (CBOR)")))
	}
}

func (s *Server) lease(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.POST {
		methodNotAllowed(w, "POST")
		return
	}
	f := wire.CBOR
	if cf, err := m.ContentFormat(); err == nil {
		f = wire.Format(cf)
	} else if a, err := m.Accept(); err == nil {
		f = wire.Format(a)
	}
	if f != wire.CBOR && f != wire.JSON {
		reply(w, bootstrap.Answer{Status: bootstrap.UnsupportedFormat, Body: []byte("use content-format 60 (CBOR) or 50 (JSON)")})
		return
	}
	p, ok := w.Conn().Context().Value(peerKey{}).(peer)
	if !ok {
		body, _ := wire.Marshal(f, wire.Error{Code: bootstrap.CodeUnauthorized, Message: "lease renewal needs the device certificate on the DTLS session"})
		reply(w, bootstrap.Answer{Status: bootstrap.Unauthorized, Format: f, Body: body})
		return
	}
	reply(w, h.RenewLease(m.Context(), f, p.id, sourceOf(w)))
}

func (s *Server) getCRL(w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		methodNotAllowed(w, "GET")
		return
	}
	if s.cfg.CRL == nil {
		_ = w.SetResponse(codes.ServiceUnavailable, message.TextPlain, bytes.NewReader([]byte("no CRL")))
		return
	}
	_ = w.SetResponse(codes.Content, message.AppOctets, bytes.NewReader(s.cfg.CRL()))
}
