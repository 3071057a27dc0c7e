// Package simulator is the device side of provisiond's protocols, written
// the way real firmware behaves: it generates a key on the device, sends a
// CSR with its claim token over DTLS to the endpoint from its flash bundle,
// verifies that the returned chain leads to the root it was flashed with,
// and later renews its lease over mutual DTLS with the issued certificate.
// It speaks only the wire protocol (package transport/wire), never server
// internals, so it doubles as our interoperability check and load generator
// (see Run and cmd/devsim).
package simulator

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/transport/wire"
)

// Device is one simulated device.
type Device struct {
	Bundle wire.Bundle
	Key    crypto.Signer
	roots  *x509.CertPool

	// MAC is the device's network interface address, reported at
	// enrollment (the DHCP server knows the device by it); "" reports none.
	MAC string

	// PQ offers the hybrid post-quantum key exchange (X25519MLKEM768) in
	// TLS, as Go's TLS does by default. Without it the device offers X25519
	// and P-256, as device TLS stacks such as mbedTLS do (DTLS has no
	// hybrid either).
	PQ bool

	// Set by a successful Enroll.
	Enrollment *wire.EnrollResponse
	Chain      []*x509.Certificate

	mu       sync.Mutex
	firmware string // installed by UpdateFirmware
}

// NewDevice prepares a device from its flash bundle, generating its key.
func NewDevice(b wire.Bundle) (*Device, error) {
	roots, err := rootPool(b.RootCA)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", b.Serial, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return &Device{Bundle: b, Key: key, roots: roots}, nil
}

// LoadBundles reads every <serial>.json flash bundle in dir (not the manifest).
func LoadBundles(dir string) ([]wire.Bundle, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	sort.Strings(paths)
	var out []wire.Bundle
	for _, p := range paths {
		if filepath.Base(p) == "manifest.json" {
			continue
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var b wire.Bundle
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, fmt.Errorf("bundle %s: %w", p, err)
		}
		if b.Serial == "" || b.ClaimToken == "" {
			return nil, fmt.Errorf("bundle %s: serial and claim_token required", p)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no flash bundles (*.json) in %s", dir)
	}
	return out, nil
}

// Error is a refusal from the server: its CoAP code and error body.
type Error struct {
	Code   codes.Code
	Body   wire.Error
	MaxAge time.Duration // from the Max-Age option, when given
}

func (e *Error) Error() string {
	if e.Body.Code != "" {
		return fmt.Sprintf("%v %s: %s", e.Code, e.Body.Code, e.Body.Message)
	}
	return e.Code.String()
}

// Reason is a short label for summaries: the error code, or the kind of failure.
func Reason(err error) string {
	var e *Error
	switch {
	case errors.As(err, &e) && e.Body.Code != "":
		return e.Body.Code
	case errors.As(err, &e):
		return e.Code.String()
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "transport"
}

// EnrollOptions tune one enrollment.
type EnrollOptions struct {
	Endpoint string      // overrides the bundle's first coaps:// endpoint (host:port or URL)
	Format   wire.Format // CBOR (default) or JSON
}

// endpointURL is override, or else the bundle's first endpoint with one of
// the schemes; a bare host:port gets the first scheme.
func (d *Device) endpointURL(override string, schemes ...string) (*url.URL, error) {
	ep := override
	if ep == "" {
	find:
		for _, e := range d.Bundle.Endpoints {
			for _, sc := range schemes {
				if strings.HasPrefix(e, sc+"://") {
					ep = e
					break find
				}
			}
		}
	}
	if ep == "" {
		return nil, fmt.Errorf("no %s:// endpoint in bundle", schemes[0])
	}
	if !strings.Contains(ep, "://") {
		ep = schemes[0] + "://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", ep, err)
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return u, nil
		}
	}
	return nil, fmt.Errorf("endpoint %q: want %s://", ep, strings.Join(schemes, ":// or "))
}

func (d *Device) endpoint(override string) (host, addr string, err error) {
	u, err := d.endpointURL(override, "coaps")
	if err != nil {
		return "", "", err
	}
	return u.Hostname(), u.Host, nil
}

func (d *Device) dial(ctx context.Context, override string, cert *tls.Certificate, extra ...coapudp.Option) (*udpclient.Conn, error) {
	return d.dialWith(ctx, override, func(cfg *piondtls.Config) {
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
	}, extra...)
}

// dialWith opens a DTLS session to the endpoint; set adds the client's
// credentials to the config.
func (d *Device) dialWith(ctx context.Context, override string, set func(*piondtls.Config), extra ...coapudp.Option) (*udpclient.Conn, error) {
	host, addr, err := d.endpoint(override)
	if err != nil {
		return nil, err
	}
	cfg := &piondtls.Config{
		ServerName:           host,
		ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret,
		// pion's own chain check is replaced by an equivalent one that
		// remembers chains it fully verified (see verifyServer).
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyServer([]byte(d.Bundle.RootCA), d.roots, host, raw)
		},
	}
	set(cfg)
	var dl net.Dialer
	if deadline, ok := ctx.Deadline(); ok {
		dl.Deadline = deadline
	}
	opts := append([]coapudp.Option{options.WithDialer(&dl), options.WithContext(ctx), options.WithErrors(func(error) {})}, extra...)
	return coapdtls.Dial(addr, cfg, opts...)
}

// CSR returns a DER PKCS#10 request for the device key, naming the serial.
func (d *Device) CSR() ([]byte, error) {
	return buildCSR(d.Bundle.Serial, d.Key)
}

// enrollRequest is the device's enrollment request (a fresh CSR for its
// key) encoded in f.
func (d *Device) enrollRequest(f wire.Format) ([]byte, error) {
	csr, err := d.CSR()
	if err != nil {
		return nil, err
	}
	return wire.Marshal(f, wire.EnrollRequest{Serial: d.Bundle.Serial, ClaimToken: d.Bundle.ClaimToken,
		CSR: csr, Model: d.Bundle.Model, FirmwareVersion: "sim-1.0.0", MAC: d.MAC})
}

// Enroll runs the bootstrap: POST /enroll over DTLS, then checks the answer
// (the chain verifies to the flashed root and certifies this device's key).
func (d *Device) Enroll(ctx context.Context, o EnrollOptions) (*wire.EnrollResponse, error) {
	if o.Format == 0 {
		o.Format = wire.CBOR
	}
	body, err := d.enrollRequest(o.Format)
	if err != nil {
		return nil, err
	}
	var out wire.EnrollResponse
	if err := d.post(ctx, o, nil, "/enroll", body, codes.Created, &out); err != nil {
		return nil, err
	}
	chain, err := d.verify(&out)
	if err != nil {
		return nil, err
	}
	d.Enrollment, d.Chain = &out, chain
	return &out, nil
}

func decodeAnswer(resp *pool.Message, want codes.Code, f wire.Format, v any) error {
	body, err := resp.ReadBody()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.Code() != want {
		e := &Error{Code: resp.Code()}
		if ma, err := resp.GetOptionUint32(message.MaxAge); err == nil {
			e.MaxAge = time.Duration(ma) * time.Second
		}
		if cf, err := resp.ContentFormat(); err == nil && (cf == message.AppCBOR || cf == message.AppJSON) {
			_ = wire.Unmarshal(wire.Format(cf), body, &e.Body)
		} else {
			e.Body.Message = string(body)
		}
		return e
	}
	if v == nil { // an answer without a body
		return nil
	}
	if cf, err := resp.ContentFormat(); err != nil || wire.Format(cf) != f {
		return fmt.Errorf("answer content-format %v, want %v", cf, f)
	}
	return wire.Unmarshal(f, body, v)
}

func (d *Device) verify(r *wire.EnrollResponse) ([]*x509.Certificate, error) {
	return d.verifyFor(d.Key, *r)
}

// verifyFor checks that the chain leads to the flashed root and certifies key.
func (d *Device) verifyFor(key crypto.Signer, r wire.EnrollResponse) ([]*x509.Certificate, error) {
	if len(r.Certificate) == 0 {
		return nil, errors.New("answer has no certificate")
	}
	var chain []*x509.Certificate
	for i, der := range r.Certificate {
		parse := x509.ParseCertificate // the device's own leaf
		if i > 0 {
			parse = parseCA
		}
		c, err := parse(der)
		if err != nil {
			return nil, fmt.Errorf("answer certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if err := verifyIssued([]byte(d.Bundle.RootCA), d.roots, chain); err != nil {
		return nil, fmt.Errorf("issued chain does not verify to the flashed root: %w", err)
	}
	type eq interface{ Equal(crypto.PublicKey) bool }
	if k, ok := chain[0].PublicKey.(eq); !ok || !k.Equal(key.Public()) {
		return nil, errors.New("issued certificate is not for this device's key")
	}
	return chain, nil
}

// TLSCertificate is the device's issued identity for mutual DTLS.
func (d *Device) TLSCertificate() (*tls.Certificate, error) {
	if d.Chain == nil {
		return nil, errors.New("device is not enrolled")
	}
	c := &tls.Certificate{PrivateKey: d.Key, Leaf: d.Chain[0]}
	for _, x := range d.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// RenewLease renews the device's lease over mutual DTLS (POST /lease).
func (d *Device) RenewLease(ctx context.Context, o EnrollOptions) (*wire.LeaseResponse, error) {
	if o.Format == 0 {
		o.Format = wire.CBOR
	}
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	var out wire.LeaseResponse
	if err := d.post(ctx, o, cert, "/lease", nil, codes.Changed, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// post sends one request on a fresh DTLS session (mutual when cert is set)
// and decodes an answer with the wanted code into out.
func (d *Device) post(ctx context.Context, o EnrollOptions, cert *tls.Certificate, path string, body []byte, want codes.Code, out any) error {
	conn, err := d.dial(ctx, o.Endpoint, cert)
	if err != nil {
		return fmt.Errorf("dtls dial: %w", err)
	}
	defer conn.Close()
	resp, err := conn.Post(ctx, path, message.MediaType(o.Format), bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("post %s: %w", path, err)
	}
	defer conn.ReleaseMessage(resp)
	return decodeAnswer(resp, want, o.Format, out)
}

// PEM renders the issued chain as PEM (leaf first).
func (d *Device) PEM() []byte {
	var b bytes.Buffer
	for _, c := range d.Chain {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// curves is what the device's TLS offers for the key exchange (PQ).
func (d *Device) curves() []tls.CurveID {
	if d.PQ {
		return nil // Go's default: X25519MLKEM768 first
	}
	return []tls.CurveID{tls.X25519, tls.CurveP256}
}
