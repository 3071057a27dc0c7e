// Package bootstrap maps the bootstrap wire messages to package enroll and
// back, the same for every transport: it decodes a request body, calls the
// enrollment service and encodes the answer or the error, and reports a
// protocol-neutral Status that each transport turns into its own code
// (CoAP 4.01, MQTT error response, HTTP 401).
package bootstrap

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/wire"
)

// Status is the outcome of a request, before a transport names it.
type Status int

// Outcomes; the comment gives the CoAP code each maps to.
const (
	Created           Status = iota // 2.01
	Changed                         // 2.04
	BadRequest                      // 4.00
	Unauthorized                    // 4.01
	Forbidden                       // 4.03
	NotFound                        // 4.04
	TooLarge                        // 4.13
	UnsupportedFormat               // 4.15
	TooManyRequests                 // 4.29
	Internal                        // 5.00
	Unavailable                     // 5.03
)

// Error codes carried in wire.Error.Code. They are part of the protocol.
const (
	CodeBadRequest         = "bad_request"
	CodeUnsupportedKey     = "unsupported_key"
	CodeUnauthorized       = "unauthorized"
	CodeNotClaimed         = "not_claimed"
	CodeRevoked            = "revoked"
	CodeTokenUsed          = "token_used"
	CodeAlreadyProvisioned = "already_provisioned"
	CodeThrottled          = "throttled"
	CodePoolExhausted      = "pool_exhausted"
	CodeTooLarge           = "too_large"
	CodeUnsupportedFormat  = "unsupported_format"
	CodeUnknownDevice      = "unknown_device"
	CodeOverloaded         = "overloaded"
	CodeUnavailable        = "unavailable"
	CodeInternal           = "internal"
)

// StoreRetry is the retry hint when the inventory's store is unavailable:
// long enough for etcd to elect a leader or an operator to restore quorum,
// short enough not to strand a device.
const StoreRetry = 15 * time.Second

// Code is the CoAP response code of a status, in dotted form ("4.01"). MQTT
// replies carry it too, so both transports speak the same codes.
func (s Status) Code() string {
	return [...]string{"2.01", "2.04", "4.00", "4.01", "4.03", "4.04", "4.13", "4.15", "4.29", "5.00", "5.03"}[s]
}

// Answer is what a transport sends back.
type Answer struct {
	Status     Status
	Format     wire.Format // of Body; zero when Body is plain text
	Body       []byte
	Value      any           // what Body encodes: *wire.EnrollResponse, *wire.LeaseResponse or *wire.Error
	RetryAfter time.Duration // Max-Age / Retry-After when > 0
}

// Reply wraps the answer for transports without status codes (MQTT).
func (a Answer) Reply() wire.Reply {
	r := wire.Reply{Status: a.Status.Code()}
	switch v := a.Value.(type) {
	case *wire.EnrollResponse:
		r.Enrollment = v
	case *wire.LeaseResponse:
		r.Lease = v
	case *wire.RenewResponse:
		r.Renewal = v
	case *wire.Error:
		r.Error = v
	default:
		r.Error = &wire.Error{Code: CodeInternal, Message: string(a.Body)}
	}
	return r
}

// Enroller is the enrollment service as the transports see it.
type Enroller interface {
	Enroll(ctx context.Context, req enroll.Request) (enroll.Result, error)
	RenewLease(ctx context.Context, id uuid.UUID, source netip.AddrPort, transport string) (enroll.DeviceConfig, error)
	Renew(ctx context.Context, id uuid.UUID, presented string, csr []byte, source netip.AddrPort, transport string) (enroll.Result, error)
}

// Renew handles a certificate renewal by a device authenticated with the
// certificate whose serial is presented ("" when an external broker did the
// authentication: then the device's current certificate is assumed).
func (h *Handler) Renew(ctx context.Context, f wire.Format, id uuid.UUID, presented string, body []byte, src netip.AddrPort) Answer {
	if f != wire.JSON && f != wire.CBOR {
		return Answer{Status: UnsupportedFormat, Body: []byte("use content-format 60 (CBOR) or 50 (JSON)"),
			Value: &wire.Error{Code: CodeUnsupportedFormat, Message: "use CBOR or JSON"}}
	}
	if len(body) > wire.MaxRequestBytes {
		return h.TooLarge(f)
	}
	var req wire.RenewRequest
	if err := wire.Unmarshal(f, body, &req); err != nil {
		return h.errorAnswer(f, BadRequest, CodeBadRequest, err.Error(), 0)
	}
	res, err := h.Enroller.Renew(ctx, id, presented, req.CSR, src, h.Transport)
	if err != nil {
		return h.Error(f, err)
	}
	full := Response(res)
	resp := wire.RenewResponse{Certificate: full.Certificate, CA: full.CA}
	out, err := wire.Marshal(f, resp)
	if err != nil {
		return h.Error(f, err)
	}
	return Answer{Status: Changed, Format: f, Body: out, Value: &resp}
}

// Handler serves bootstrap requests for one transport.
type Handler struct {
	Enroller  Enroller
	Transport string // for audit and logs: "coaps", "coap", "mqtt"
	Log       *slog.Logger
	// Observe, when set, is told the result (CoAP code) and duration of
	// every enrollment request (metrics).
	Observe func(transport, result string, d time.Duration)
}

// Enroll handles one enrollment request body.
func (h *Handler) Enroll(ctx context.Context, f wire.Format, body []byte, src netip.AddrPort) Answer {
	if h.Observe == nil {
		return h.enroll(ctx, f, body, src)
	}
	start := time.Now()
	a := h.enroll(ctx, f, body, src)
	h.Observe(h.Transport, a.Status.Code(), time.Since(start))
	return a
}

func (h *Handler) enroll(ctx context.Context, f wire.Format, body []byte, src netip.AddrPort) Answer {
	if f != wire.JSON && f != wire.CBOR {
		return Answer{Status: UnsupportedFormat, Body: []byte("use content-format 60 (CBOR) or 50 (JSON)"),
			Value: &wire.Error{Code: CodeUnsupportedFormat, Message: "use CBOR or JSON"}}
	}
	if len(body) > wire.MaxRequestBytes {
		return h.TooLarge(f)
	}
	var req wire.EnrollRequest
	if err := wire.Unmarshal(f, body, &req); err != nil {
		return h.errorAnswer(f, BadRequest, CodeBadRequest, err.Error(), 0)
	}
	res, err := h.Enroller.Enroll(ctx, enroll.Request{
		Serial: req.Serial, ClaimToken: req.ClaimToken, CSR: req.CSR, Model: req.Model,
		FirmwareVersion: req.FirmwareVersion, MAC: req.MAC, Source: src, Transport: h.Transport,
		Factory: FactoryChain(ctx),
	})
	if err != nil {
		return h.Error(f, err)
	}
	resp := Response(res)
	out, err := wire.Marshal(f, resp)
	if err != nil {
		return h.Error(f, err)
	}
	return Answer{Status: Created, Format: f, Body: out, Value: &resp}
}

// TooLarge answers a request whose body exceeds wire.MaxRequestBytes, for
// transports that notice before reading it all.
func (h *Handler) TooLarge(f wire.Format) Answer {
	return h.errorAnswer(f, TooLarge, CodeTooLarge, fmt.Sprintf("request body larger than %d bytes", wire.MaxRequestBytes), 0)
}

// RenewLease handles a lease renewal by an authenticated device.
func (h *Handler) RenewLease(ctx context.Context, f wire.Format, id uuid.UUID, src netip.AddrPort) Answer {
	cfg, err := h.Enroller.RenewLease(ctx, id, src, h.Transport)
	if err != nil {
		return h.Error(f, err)
	}
	resp := LeaseResponse(cfg)
	out, err := wire.Marshal(f, resp)
	if err != nil {
		return h.Error(f, err)
	}
	return Answer{Status: Changed, Format: f, Body: out, Value: &resp}
}

// LeaseResponse converts a renewed config to its wire form.
func LeaseResponse(cfg enroll.DeviceConfig) wire.LeaseResponse {
	return wire.LeaseResponse{Lease: lease(cfg.Lease), Network: network(cfg.Network), ConfigVersion: cfg.Version}
}

// Config converts a device's config to the form pushed on its operational channel.
func Config(id uuid.UUID, cfg enroll.DeviceConfig) wire.DeviceConfig {
	return wire.DeviceConfig{DeviceID: id.String(), ConfigVersion: cfg.Version,
		WiFi:    wifi(cfg.WiFi),
		Network: network(cfg.Network), Lease: lease(cfg.Lease), Firmware: firmwareTarget(cfg.Firmware)}
}

func wifi(w enroll.WiFi) wire.WiFi {
	out := wire.WiFi{SSID: w.SSID, Security: w.Security, Passphrase: w.Passphrase}
	if w.EAP != nil {
		out.EAP = &wire.EAP{Method: w.EAP.Method, Identity: w.EAP.Identity, ServerName: w.EAP.ServerName}
		if w.EAP.CA != nil {
			out.EAP.CA = w.EAP.CA.Raw
		}
	}
	return out
}

func firmwareTarget(t *enroll.FirmwareTarget) *wire.FirmwareTarget {
	if t == nil {
		return nil
	}
	return &wire.FirmwareTarget{Version: t.Version, Size: t.Size, SHA256: t.SHA256, URIs: t.URIs,
		Manifest: t.Manifest, Signature: t.Signature}
}

// Response converts an enrollment result to its wire form.
func Response(res enroll.Result) wire.EnrollResponse {
	chain := make(wire.Chain, len(res.Chain))
	for i, c := range res.Chain {
		chain[i] = c.Raw
	}
	return wire.EnrollResponse{
		DeviceID:      res.DeviceID.String(),
		Certificate:   chain,
		CA:            rawOf(res.Root),
		WiFi:          wifi(res.Config.WiFi),
		Network:       network(res.Config.Network),
		Lease:         lease(res.Config.Lease),
		ConfigVersion: res.Config.Version,
		Firmware:      firmwareTarget(res.Config.Firmware),
		FirmwareKey:   string(res.FirmwareKey),
	}
}

func rawOf(c *x509.Certificate) wire.Cert {
	if c == nil {
		return nil
	}
	return c.Raw
}

func network(n enroll.Network) wire.Network {
	out := wire.Network{Address: n.Address.String(), PrefixLen: n.PrefixLen, Gateway: n.Gateway.String(), NTP: n.NTP}
	for _, d := range n.DNS {
		out.DNS = append(out.DNS, d.String())
	}
	return out
}

func lease(l enroll.Lease) wire.Lease {
	return wire.Lease{Address: l.Address.String(), ExpiresAt: l.ExpiresAt.UTC()}
}

// Error maps an error from package enroll to an answer in format f.
func (h *Handler) Error(f wire.Format, err error) Answer {
	retry, _ := enroll.RetryAfter(err)
	switch {
	case errors.Is(err, enroll.ErrUnsupportedKey):
		return h.errorAnswer(f, BadRequest, CodeUnsupportedKey, err.Error(), 0)
	case errors.Is(err, enroll.ErrInvalid):
		return h.errorAnswer(f, BadRequest, CodeBadRequest, err.Error(), 0)
	case errors.Is(err, enroll.ErrUnauthorized):
		return h.errorAnswer(f, Unauthorized, CodeUnauthorized, enroll.ErrUnauthorized.Error(), 0)
	case errors.Is(err, enroll.ErrNotClaimed):
		return h.errorAnswer(f, Forbidden, CodeNotClaimed, enroll.ErrNotClaimed.Error(), retry)
	case errors.Is(err, enroll.ErrRevoked):
		return h.errorAnswer(f, Forbidden, CodeRevoked, enroll.ErrRevoked.Error(), 0)
	case errors.Is(err, enroll.ErrTokenUsed):
		return h.errorAnswer(f, Forbidden, CodeTokenUsed, "claim token already used with another key", 0)
	case errors.Is(err, enroll.ErrAlreadyProvisioned):
		return h.errorAnswer(f, Forbidden, CodeAlreadyProvisioned, "device already provisioned; renew instead", 0)
	case errors.Is(err, enroll.ErrThrottled):
		return h.errorAnswer(f, TooManyRequests, CodeThrottled, enroll.ErrThrottled.Error(), retry)
	case errors.Is(err, enroll.ErrPoolExhausted):
		return h.errorAnswer(f, Unavailable, CodePoolExhausted, "no free address in the site's pool", retry)
	case errors.Is(err, enroll.ErrOverloaded):
		return h.errorAnswer(f, Unavailable, CodeOverloaded, "too many enrollments in progress; retry after the hint", retry)
	case errors.Is(err, enroll.ErrUnknownDevice):
		return h.errorAnswer(f, NotFound, CodeUnknownDevice, "unknown device", 0)
	case errors.Is(err, kv.ErrUnavailable):
		// The inventory's store (etcd without quorum) did not answer in
		// time; nothing was written (or a lost commit was settled).
		h.Log.Warn("bootstrap request: store unavailable", "transport", h.Transport, "err", err)
		return h.errorAnswer(f, Unavailable, CodeUnavailable, "the inventory is unavailable; retry after the hint", StoreRetry)
	}
	h.Log.Error("bootstrap request failed", "transport", h.Transport, "err", err)
	return h.errorAnswer(f, Internal, CodeInternal, "internal error", 0)
}

func (h *Handler) errorAnswer(f wire.Format, s Status, code, msg string, retry time.Duration) Answer {
	secs := 0
	if retry > 0 {
		secs = int(math.Ceil(retry.Seconds()))
	}
	e := wire.Error{Code: code, Message: msg, RetryAfter: secs}
	body, err := wire.Marshal(f, e)
	if err != nil {
		return Answer{Status: s, Body: []byte(code + ": " + msg), Value: &e, RetryAfter: retry}
	}
	return Answer{Status: s, Format: f, Body: body, Value: &e, RetryAfter: time.Duration(secs) * time.Second}
}

type factoryKey struct{}

// WithFactory says that the session a request came on was authenticated
// with a factory certificate (IDevID): chain, leaf first, verified by the
// transport. An enrollment without a claim token then authenticates with it.
func WithFactory(ctx context.Context, chain []*x509.Certificate) context.Context {
	return context.WithValue(ctx, factoryKey{}, chain)
}

// FactoryChain is the chain WithFactory put in ctx, or nil.
func FactoryChain(ctx context.Context) []*x509.Certificate {
	c, _ := ctx.Value(factoryKey{}).([]*x509.Certificate)
	return c
}
