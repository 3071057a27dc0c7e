package simulator

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/wire"
)

// ESTOptions tune an enrollment over EST.
type ESTOptions struct {
	// Endpoint overrides the bundle's https:// endpoint (host:port or URL).
	Endpoint string
}

// FactoryIdentity is the bundle's factory certificate (IDevID) as a TLS
// client certificate, nil when the bundle has none.
func (d *Device) FactoryIdentity() (*tls.Certificate, error) {
	if d.Bundle.IDevID == "" {
		return nil, nil
	}
	c, err := tls.X509KeyPair([]byte(d.Bundle.IDevID), []byte(d.Bundle.IDevIDKey))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: factory certificate: %w", d.Bundle.Serial, err)
	}
	return &c, nil
}

// EnrollEST enrolls over EST (RFC 7030) as a device with a stock EST client
// does: /cacerts, then /simpleenroll authenticated by the factory
// certificate when the bundle holds one, else by HTTP Basic (serial and
// claim token); it checks the certificate against the flashed root, then
// reads its config over mutual TLS with it (GET /device/v1/config).
func (d *Device) EnrollEST(ctx context.Context, o ESTOptions) (*wire.DeviceConfig, error) {
	factory, err := d.FactoryIdentity()
	if err != nil {
		return nil, err
	}
	hc, origin, err := d.httpsTo(o.Endpoint, factory)
	if err != nil {
		return nil, err
	}
	defer hc.CloseIdleConnections()
	root := origin + est.PathPrefix

	body, err := d.estDo(ctx, hc, http.MethodGet, root+"/cacerts", nil, false)
	if err != nil {
		return nil, err
	}
	cas, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("cacerts: %w", err)
	}
	csr, err := d.CSR()
	if err != nil {
		return nil, err
	}
	body, err = d.estDo(ctx, hc, http.MethodPost, root+"/simpleenroll", []byte(base64.StdEncoding.EncodeToString(csr)), factory == nil)
	if err != nil {
		return nil, err
	}
	issued, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("simpleenroll: %w", err)
	}
	if err := d.acceptChain(issued[0], cas); err != nil {
		return nil, err
	}
	cfg, err := d.ConfigHTTPS(ctx, o)
	if err != nil {
		return nil, err
	}
	d.Enrollment = d.enrollmentOf(cfg, cas)
	return cfg, nil
}

// enrollmentOf is what an EST enrollment gave the device, in the form of
// a CoAP /enroll answer, so that the operational channel (MQTT sessions,
// soak runs) works the same whichever way the device enrolled. EST carries
// no firmware signing key: FirmwareKey stays empty.
func (d *Device) enrollmentOf(cfg *wire.DeviceConfig, cas []*x509.Certificate) *wire.EnrollResponse {
	r := &wire.EnrollResponse{DeviceID: cfg.DeviceID, WiFi: cfg.WiFi, Network: cfg.Network, Lease: cfg.Lease,
		ConfigVersion: cfg.ConfigVersion, Firmware: cfg.Firmware}
	for _, c := range d.Chain {
		r.Certificate = append(r.Certificate, c.Raw)
	}
	for _, c := range cas {
		if bytes.Equal(c.RawSubject, c.RawIssuer) {
			r.CA = c.Raw
		}
	}
	return r
}

// acceptChain checks an issued leaf against the flashed root, with the
// intermediates among cas, and keeps leaf + intermediate as the device's chain.
func (d *Device) acceptChain(leaf *x509.Certificate, cas []*x509.Certificate) error {
	chain := []*x509.Certificate{leaf}
	for _, c := range cas {
		if !bytes.Equal(c.RawSubject, c.RawIssuer) { // the root stays out of the chain a device presents
			chain = append(chain, c)
		}
	}
	if err := verifyIssued([]byte(d.Bundle.RootCA), d.roots, chain); err != nil {
		return fmt.Errorf("issued chain does not verify to the flashed root: %w", err)
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(d.Key.Public()) {
		return errors.New("issued certificate is not for this device's key")
	}
	d.Chain = chain
	return nil
}

// ConfigHTTPS reads the device's config over mutual TLS with its issued
// certificate (GET /device/v1/config).
func (d *Device) ConfigHTTPS(ctx context.Context, o ESTOptions) (*wire.DeviceConfig, error) {
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	hc, origin, err := d.httpsTo(o.Endpoint, cert)
	if err != nil {
		return nil, err
	}
	defer hc.CloseIdleConnections()
	body, err := d.estDo(ctx, hc, http.MethodGet, origin+"/device/v1/config", nil, false)
	if err != nil {
		return nil, err
	}
	var cfg wire.DeviceConfig
	if err := json.Unmarshal(body, &cfg); err != nil {
		return nil, fmt.Errorf("device config: %w", err)
	}
	return &cfg, nil
}

// httpsTo is an HTTPS client for the bundle's https:// endpoint (or
// override) presenting cert (nil: none), and the endpoint's origin.
func (d *Device) httpsTo(override string, cert *tls.Certificate) (*http.Client, string, error) {
	base, err := d.endpointURL(override, "https")
	if err != nil {
		return nil, "", err
	}
	return d.httpsClient(base.Hostname(), cert), "https://" + base.Host, nil
}

func (d *Device) httpsClient(host string, cert *tls.Certificate) *http.Client {
	tc := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, CurvePreferences: d.curves(),
		// Same check as for DTLS and MQTT, remembering fully verified chains
		// (verify.go): an EST enrollment opens two sessions.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyServer([]byte(d.Bundle.RootCA), d.roots, host, raw)
		},
	}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
}

// estDo sends one request and returns the answer's body, base64-decoded
// when the answer says Content-Transfer-Encoding: base64. Anything but 200
// is an *Error, its status mapped to the CoAP code the same refusal has on
// /enroll and Retry-After to MaxAge, so that retries treat both alike.
func (d *Device) estDo(ctx context.Context, hc *http.Client, method, url string, body []byte, basic bool) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", est.MediaPKCS10)
	}
	if basic {
		req.SetBasicAuth(d.Bundle.Serial, d.Bundle.ClaimToken)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, httpError(resp, raw)
	}
	if strings.EqualFold(resp.Header.Get("Content-Transfer-Encoding"), "base64") {
		return base64.StdEncoding.DecodeString(strings.Map(func(r rune) rune {
			if r == '\r' || r == '\n' {
				return -1
			}
			return r
		}, string(raw)))
	}
	return raw, nil
}

func httpError(resp *http.Response, body []byte) *Error {
	e := &Error{Body: wire.Error{Message: strings.TrimSpace(string(body))}}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		e.MaxAge = time.Duration(s) * time.Second
	}
	switch resp.StatusCode {
	case http.StatusAccepted:
		e.Code, e.Body.Code = codes.Forbidden, "not_claimed"
	case http.StatusBadRequest:
		e.Code, e.Body.Code = codes.BadRequest, "invalid"
	case http.StatusUnauthorized:
		e.Code, e.Body.Code = codes.Unauthorized, "unauthorized"
	case http.StatusForbidden:
		e.Code, e.Body.Code = codes.Forbidden, "forbidden"
	case http.StatusRequestEntityTooLarge:
		e.Code, e.Body.Code = codes.RequestEntityTooLarge, "too_large"
	case http.StatusTooManyRequests:
		e.Code, e.Body.Code = codes.ServiceUnavailable, "throttled"
	case http.StatusServiceUnavailable:
		e.Code, e.Body.Code = codes.ServiceUnavailable, "overloaded"
	default:
		e.Code, e.Body.Code = codes.InternalServerError, "internal"
	}
	if json.Valid(body) { // the JSON error of the device routes
		var eb struct {
			Error wire.Error `json:"error"`
		}
		if json.Unmarshal(body, &eb) == nil && eb.Error.Message != "" {
			e.Body.Message = eb.Error.Message
		}
	}
	return e
}
