package lwm2m

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/coap"
	"github.com/provisiond/provisiond/transport/est"
)

// Endpoint maps device serials to LwM2M endpoint names and back, by a
// pattern with one "{serial}", e.g. "urn:dev:ops:acme-{serial}". The
// default, "{serial}", is the serial itself.
type Endpoint struct{ prefix, suffix string }

// ParseEndpoint reads an endpoint-name pattern.
func ParseEndpoint(pattern string) (Endpoint, error) {
	if pattern == "" {
		pattern = "{serial}"
	}
	prefix, suffix, ok := strings.Cut(pattern, "{serial}")
	if !ok || strings.Contains(suffix, "{serial}") {
		return Endpoint{}, fmt.Errorf("lwm2m endpoint pattern %q: name {serial} exactly once", pattern)
	}
	return Endpoint{prefix: prefix, suffix: suffix}, nil
}

// Name is the endpoint name of serial.
func (e Endpoint) Name(serial string) string { return e.prefix + serial + e.suffix }

// Serial is the serial an endpoint name (or PSK identity) names, or false.
func (e Endpoint) Serial(name string) (string, bool) {
	s, ok := strings.CutPrefix(name, e.prefix)
	if !ok {
		return "", false
	}
	s, ok = strings.CutSuffix(s, e.suffix)
	if !ok || !devices.ValidSerial(s) {
		return "", false
	}
	return s, true
}

// Config configures the LwM2M bootstrap server.
type Config struct {
	Service  *enroll.Service
	Endpoint Endpoint
	// Timeout bounds a bootstrap from the Bootstrap-Request to the answer
	// to Finish; a client that stops answering is given up after it and
	// nothing is recorded. Default 60s (go-coap's retransmissions of one
	// request span about 45 s).
	Timeout time.Duration
	Log     *slog.Logger
	// Observe hears each bootstrap's result and duration (metrics), as
	// coap.Config.Observe hears enrollments; nil: nobody.
	Observe func(transport, result string, d time.Duration)
}

// BootstrapServer is the bootstrap-server half of LwM2M client-initiated bootstrap,
// mounted on the DTLS listener as the resource /bs.
type BootstrapServer struct {
	cfg Config
	mu  sync.Mutex
	// busy holds the sessions with a bootstrap in progress: a second
	// Bootstrap-Request on one waits for the first to end.
	busy map[*udpclient.Conn]bool
}

// NewBootstrapServer returns the bootstrap server.
func NewBootstrapServer(cfg Config) *BootstrapServer {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Endpoint == (Endpoint{}) {
		cfg.Endpoint, _ = ParseEndpoint("")
	}
	return &BootstrapServer{cfg: cfg, busy: map[*udpclient.Conn]bool{}}
}

// Resources is /bs, for coap.Config.Resources (DTLS only: a bootstrap
// needs an authenticated session).
func (s *BootstrapServer) Resources() []coap.Resource {
	return []coap.Resource{{Path: "/bs", Handler: mux.HandlerFunc(s.request)}}
}

// request answers a Bootstrap-Request, POST /bs?ep=NAME[&pct=FORMAT]: 2.04
// and the bootstrap starts on the session, or the refusal with its
// diagnostic.
func (s *BootstrapServer) request(w mux.ResponseWriter, m *mux.Message) {
	start := time.Now()
	if m.Code() != codes.POST {
		est.CoAPFail(w, codes.MethodNotAllowed, "Bootstrap-Request: POST /bs?ep=NAME", 0)
		return
	}
	q, err := m.Options().Queries()
	if err != nil && !errors.Is(err, message.ErrOptionNotFound) {
		est.CoAPFail(w, codes.BadRequest, "Bootstrap-Request: unreadable query", 0)
		return
	}
	var ep string
	format := FormatTLV // what every LwM2M 1.0 client reads
	for _, kv := range q {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "ep":
			ep = v
		case "pct":
			n, err := strconv.ParseUint(v, 10, 16)
			f := message.MediaType(n)
			if err != nil || (f != FormatTLV && f != FormatSenMLCBOR && f != FormatSenMLJSON) {
				s.observe("invalid", start)
				est.CoAPFail(w, codes.BadRequest, fmt.Sprintf("pct=%s: provisiond writes TLV (11542), SenML CBOR (112) or SenML JSON (110)", v), 0)
				return
			}
			format = f
		}
	}
	serial, ok := s.cfg.Endpoint.Serial(ep)
	if !ok {
		s.observe("invalid", start)
		est.CoAPFail(w, codes.BadRequest, fmt.Sprintf("ep=%.64q is not an endpoint name of a device (%s)", ep, s.cfg.Endpoint.Name("SERIAL")), 0)
		return
	}
	cc, ok := w.Conn().(*udpclient.Conn)
	if !ok {
		est.CoAPFail(w, codes.InternalServerError, "not a UDP session", 0)
		return
	}
	req := enroll.LwM2MRequest{Serial: serial, Source: coap.Source(w)}
	if id, ok := coap.PSKPeer(w); ok {
		if req.PSKIdentity, ok = s.cfg.Endpoint.Serial(id); !ok {
			req.PSKIdentity = id // names no serial: refused as not the endpoint's
		}
	} else if chain, ok := coap.FactoryPeer(w); ok {
		req.Factory = chain
	} else if id, _, ok := coap.Peer(w); ok {
		req.DeviceID = id
	} else {
		s.observe("unauthorized", start)
		est.CoAPFail(w, codes.Unauthorized, "a bootstrap needs a DTLS session authenticated with the device's bootstrap PSK or a certificate (IDevID or provisiond's)", 0)
		return
	}
	s.mu.Lock()
	busy := s.busy[cc]
	if !busy {
		s.busy[cc] = true
	}
	s.mu.Unlock()
	if busy {
		est.CoAPFail(w, codes.ServiceUnavailable, "a bootstrap is in progress on this session", s.cfg.Timeout)
		return
	}
	grant, err := s.cfg.Service.PrepareLwM2M(m.Context(), req)
	if err != nil {
		s.idle(cc)
		coap.Answered(cc)
		code, msg, retry := est.CoAPAnswer(err)
		if code == codes.InternalServerError {
			s.cfg.Log.Error("lwm2m bootstrap request failed", "serial", serial, "err", err)
		}
		s.observe(resultOf(code), start)
		est.CoAPFail(w, code, msg, retry)
		return
	}
	_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	go s.run(cc, grant, req.Source, ep, format, start) // after the answer is out: the client expects requests from now on
}

func (s *BootstrapServer) idle(cc *udpclient.Conn) {
	s.mu.Lock()
	delete(s.busy, cc)
	s.mu.Unlock()
}

// run is the server-initiated part of the bootstrap on the client's
// session, then its end: the session is closed, except in EST mode where
// the device enrolls with EST-coaps on it next.
func (s *BootstrapServer) run(cc *udpclient.Conn, g enroll.LwM2MGrant, src netip.AddrPort, ep string, format message.MediaType, start time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	err := s.bootstrap(ctx, cc, g, src, ep, format)
	s.idle(cc)
	coap.Answered(cc) // the session's handshake slot, held through the bootstrap
	serial := g.Device.Serial
	switch {
	case err == nil:
		s.observe("created", start)
		s.cfg.Log.Info("lwm2m bootstrap finished", "serial", serial, "endpoint", ep, "format", int(format), "took", time.Since(start))
	case errors.Is(err, context.DeadlineExceeded):
		s.observe("timeout", start)
		s.cfg.Log.Info("lwm2m bootstrap abandoned: the client stopped answering", "serial", serial, "err", err)
	case errors.Is(err, ErrClient):
		s.observe("client-refused", start)
		s.cfg.Log.Info("lwm2m bootstrap refused by the client", "serial", serial, "err", err)
	default:
		s.observe("failed", start)
		s.cfg.Log.Warn("lwm2m bootstrap failed", "serial", serial, "err", err)
	}
	if err != nil || g.Profile.SecurityMode != devices.LwM2MEST {
		_ = cc.Close()
	}
}

func (s *BootstrapServer) bootstrap(ctx context.Context, cc *udpclient.Conn, g enroll.LwM2MGrant, src netip.AddrPort, ep string, format message.MediaType) error {
	disc, err := Discover(ctx, cc)
	if err != nil {
		return err
	}
	creds := Credentials{ServerCert: g.ServerCA}
	switch g.Profile.SecurityMode {
	case devices.LwM2MCertificate:
		creds.Identity, creds.Secret = g.Cert, g.Key
	case devices.LwM2MPSK:
		creds.Identity, creds.Secret, creds.ServerCert = []byte(ep), g.PSK, nil
	}
	var wlan *WLAN
	if g.Profile.WiFi && disc.Has(ObjWLAN) && g.WiFi.SSID != "" {
		wlan = &WLAN{InterfaceName: "wlan0", Enable: true, SSID: g.WiFi.SSID, AuthenticationMode: 1, KeyPhrase: g.WiFi.Passphrase}
		if g.WiFi.EAP != nil {
			// An enterprise site: 802.1X (mode 2), no key phrase; the device
			// joins with EAP-TLS and its certificate (docs/network.md).
			wlan.AuthenticationMode, wlan.KeyPhrase = 2, ""
		}
	}
	plan, err := NewPlan(format, g.Profile, creds, wlan)
	if err != nil {
		return err
	}
	plan.Commit = func(ctx context.Context) error {
		if _, err := s.cfg.Service.CommitLwM2M(ctx, g, src); err != nil {
			return err
		}
		if g.Profile.SecurityMode == devices.LwM2MEST && g.Rekey {
			coap.AllowRekey(cc) // before Finish: the client's enrollment may follow its answer at once
		}
		return nil
	}
	return Bootstrap(ctx, cc, plan)
}

func (s *BootstrapServer) observe(result string, start time.Time) {
	if s.cfg.Observe != nil {
		s.cfg.Observe("lwm2m", result, time.Since(start))
	}
}

// resultOf names a refusal for metrics.
func resultOf(c codes.Code) string {
	switch c {
	case codes.BadRequest:
		return "invalid"
	case codes.Unauthorized:
		return "unauthorized"
	case codes.Forbidden:
		return "forbidden"
	case codes.TooManyRequests:
		return "throttled"
	case codes.ServiceUnavailable:
		return "unavailable"
	}
	return "error"
}
