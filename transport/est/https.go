package est

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/pki/profile"
	"github.com/provisiond/provisiond/transport/bootstrap"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// PathPrefix is where EST is served (RFC 7030 3.2.2).
const PathPrefix = "/.well-known/est"

// Media types of RFC 7030.
const (
	MediaPKCS7     = "application/pkcs7-mime"
	MediaCertsOnly = "application/pkcs7-mime; smime-type=certs-only"
	MediaPKCS10    = "application/pkcs10"
	MediaCSRAttrs  = "application/csrattrs"
)

// HTTPS serves EST over HTTPS and the device routes beside it.
type HTTPS struct{ cfg Config }

// NewHTTPS returns the HTTPS front end.
func NewHTTPS(cfg Config) *HTTPS {
	cfg.setDefaults()
	return &HTTPS{cfg: cfg}
}

// Routes are the EST operations, with and without a label segment (RFC
// 7030 3.2.2: every label serves provisiond's one CA), and the device
// routes. All are public: each handler authenticates the device itself.
func (h *HTTPS) Routes() []httpapi.Route {
	var rs []httpapi.Route
	for _, p := range []string{PathPrefix, PathPrefix + "/{label}"} {
		rs = append(rs,
			httpapi.Route{Pattern: "GET " + p + "/cacerts", Handle: h.cacerts},
			httpapi.Route{Pattern: "POST " + p + "/simpleenroll", Handle: h.simpleenroll},
			httpapi.Route{Pattern: "POST " + p + "/simplereenroll", Handle: h.simplereenroll},
			httpapi.Route{Pattern: "GET " + p + "/csrattrs", Handle: h.csrattrs},
		)
	}
	return append(rs,
		httpapi.Route{Pattern: "GET /device/v1/config", Handle: h.deviceConfig},
		httpapi.Route{Pattern: "POST /device/v1/lease", Handle: h.deviceLease},
	)
}

func (h *HTTPS) cacerts(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	der, err := CertsOnly(h.cfg.CACerts())
	if err != nil {
		h.fail(w, err)
		return
	}
	writeBase64(w, MediaPKCS7, der)
}

func (h *HTTPS) csrattrs(w http.ResponseWriter, _ *http.Request, _ enroll.Actor) {
	writeBase64(w, MediaCSRAttrs, CSRAttrs())
}

// simpleenroll: a device's first certificate. It authenticates with HTTP
// Basic (serial and claim token) or a factory certificate; one that already
// holds provisiond's certificate is renewed as by simplereenroll.
func (h *HTTPS) simpleenroll(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	csr, ok := h.readCSR(w, r)
	if !ok {
		return
	}
	src := source(r)
	if leaf, id, serial, ok := devicePeer(r); ok {
		h.renew(w, r, leaf, id, serial, csr, src)
		return
	}
	req := enroll.Request{CSR: csr, Source: src, Transport: "est"}
	if user, pass, basic := r.BasicAuth(); basic {
		req.Serial, req.ClaimToken = user, pass
	} else if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		req.Factory = r.TLS.PeerCertificates
	} else {
		h.answer(w, Outcome{HTTP: 401, Challenge: true,
			Message: "authenticate with a factory certificate (TLS client certificate) or HTTP Basic: serial and claim token"})
		return
	}
	res, err := h.cfg.Service.Enroll(r.Context(), req)
	if err != nil {
		h.fail(w, err)
		return
	}
	h.issued(w, res)
}

// simplereenroll renews the certificate the device presents (mutual TLS)
// for the same key; the old one is superseded (CRL, OCSP) as by /renew.
func (h *HTTPS) simplereenroll(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	csr, ok := h.readCSR(w, r)
	if !ok {
		return
	}
	leaf, id, serial, ok := devicePeer(r)
	if !ok {
		h.answer(w, Outcome{HTTP: 401, Message: "re-enrollment: present the certificate provisiond issued (mutual TLS)"})
		return
	}
	h.renew(w, r, leaf, id, serial, csr, source(r))
}

func (h *HTTPS) renew(w http.ResponseWriter, r *http.Request, leaf *x509.Certificate, id uuid.UUID, serial string, csr []byte, src netip.AddrPort) {
	if err := keyMatches(csr, leaf); err != nil {
		h.fail(w, err)
		return
	}
	res, err := h.cfg.Service.Renew(r.Context(), id, serial, csr, src, "est")
	if err != nil {
		h.fail(w, err)
		return
	}
	h.issued(w, res)
}

func (h *HTTPS) issued(w http.ResponseWriter, res enroll.Result) {
	der, err := CertsOnly(res.Chain[:1])
	if err != nil {
		h.fail(w, err)
		return
	}
	writeBase64(w, MediaCertsOnly, der)
}

// deviceConfig is a device's config (Wi-Fi, network, lease, firmware
// target) over its mutual-TLS identity: what an EST-enrolled device asks
// for next.
func (h *HTTPS) deviceConfig(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	id, ok := h.authorized(w, r)
	if !ok {
		return
	}
	cfg, err := h.cfg.Service.Config(r.Context(), id)
	if err != nil {
		h.deviceFail(w, err)
		return
	}
	writeJSONBody(w, bootstrap.Config(id, cfg))
}

// deviceLease renews the device's lease and answers its config.
func (h *HTTPS) deviceLease(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	id, ok := h.authorized(w, r)
	if !ok {
		return
	}
	cfg, err := h.cfg.Service.RenewLease(r.Context(), id, source(r), "https")
	if err != nil {
		h.deviceFail(w, err)
		return
	}
	writeJSONBody(w, bootstrap.Config(id, cfg))
}

func (h *HTTPS) authorized(w http.ResponseWriter, r *http.Request) (uuid.UUID, bool) {
	_, id, serial, ok := devicePeer(r)
	if !ok {
		httpapi.WriteError(w, http.StatusUnauthorized, "unauthorized", "present the device certificate (mutual TLS)")
		return id, false
	}
	if err := h.cfg.Service.Authorize(r.Context(), id, serial); err != nil {
		h.deviceFail(w, err)
		return id, false
	}
	return id, true
}

func (h *HTTPS) deviceFail(w http.ResponseWriter, err error) {
	o := Classify(err)
	if o.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(o.RetryAfter)))
	}
	code := map[int]string{400: "invalid", 401: "unauthorized", 403: "forbidden", 429: "throttled", 503: "unavailable"}[o.HTTP]
	if code == "" {
		h.cfg.Log.Error("device request failed", "err", err)
		code = "internal"
	}
	httpapi.WriteError(w, o.HTTP, code, o.Message)
}

// readCSR reads and decodes the body of an enrollment.
func (h *HTTPS) readCSR(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		h.answer(w, Outcome{HTTP: http.StatusRequestEntityTooLarge, Message: fmt.Sprintf("body larger than %d bytes", mbe.Limit)})
		return nil, false
	}
	if err != nil {
		h.answer(w, Outcome{HTTP: 400, Message: "reading the body: " + err.Error()})
		return nil, false
	}
	csr, err := DecodeCSR(body)
	if err != nil {
		h.fail(w, err)
		return nil, false
	}
	return csr, true
}

func (h *HTTPS) fail(w http.ResponseWriter, err error) {
	o := Classify(err)
	if o.HTTP == 500 {
		h.cfg.Log.Error("EST request failed", "err", err)
	}
	h.answer(w, o)
}

// answer writes an error (or 202) as RFC 7030 has it: a human-readable
// text/plain body.
func (h *HTTPS) answer(w http.ResponseWriter, o Outcome) {
	if o.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(o.RetryAfter)))
	}
	if o.Challenge {
		w.Header().Set("WWW-Authenticate", `Basic realm="provisiond EST", charset="UTF-8"`)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(o.HTTP)
	_, _ = io.WriteString(w, o.Message+"\n")
}

func retrySeconds(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// writeBase64 writes DER as base64 with Content-Transfer-Encoding: base64
// (RFC 8951 makes the header unnecessary; older clients require it).
func writeBase64(w http.ResponseWriter, mediaType string, der []byte) {
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	enc := base64.StdEncoding.EncodeToString(der)
	// Lines of 76 characters, as MIME base64 is written.
	out := make([]byte, 0, len(enc)+len(enc)/76*2+2)
	for len(enc) > 76 {
		out = append(append(out, enc[:76]...), '\r', '\n')
		enc = enc[76:]
	}
	out = append(append(out, enc...), '\r', '\n')
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// devicePeer is the identity of a client certificate that provisiond's CA
// issued (verified by the listener: Server.VerifiedChains).
func devicePeer(r *http.Request) (*x509.Certificate, uuid.UUID, string, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return nil, uuid.UUID{}, "", false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	id, serial, err := profile.Identify(leaf)
	if err != nil {
		return nil, uuid.UUID{}, "", false
	}
	return leaf, id, serial, true
}

func source(r *http.Request) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(r.RemoteAddr)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func writeJSONBody(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
