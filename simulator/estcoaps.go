package simulator

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/wire"
)

// ESTCoAPSRoot is where the simulator finds EST-coaps: the short root that
// LwM2M devices use (RFC 9148 also serves /.well-known/est).
const ESTCoAPSRoot = "/est"

// EnrollESTCoAPS enrolls over EST-coaps (RFC 9148) on a DTLS session
// authenticated with the bundle's factory certificate: GET /est/crts, then
// POST /est/sen with the DER CSR (content-format 286, accept 281); it checks
// the certificate against the flashed root, then reads its config over
// mutual DTLS with it (GET /config).
func (d *Device) EnrollESTCoAPS(ctx context.Context, o EnrollOptions) (*wire.DeviceConfig, error) {
	factory, err := d.FactoryIdentity()
	if err != nil {
		return nil, err
	}
	if factory == nil {
		return nil, fmt.Errorf("bundle %s has no factory certificate: EST-coaps needs one (provctl factory mint --idevid)", d.Bundle.Serial)
	}
	conn, err := d.dial(ctx, o.Endpoint, factory)
	if err != nil {
		return nil, fmt.Errorf("dtls dial: %w", err)
	}
	defer conn.Close()
	body, err := coapsDo(ctx, conn, codes.GET, ESTCoAPSRoot+"/crts", nil, codes.Content)
	if err != nil {
		return nil, err
	}
	cas, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("crts: %w", err)
	}
	csr, err := d.CSR()
	if err != nil {
		return nil, err
	}
	body, err = coapsDo(ctx, conn, codes.POST, ESTCoAPSRoot+"/sen", csr, codes.Changed)
	if err != nil {
		return nil, err
	}
	issued, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, fmt.Errorf("sen: %w", err)
	}
	if err := d.acceptChain(issued[0], cas); err != nil {
		return nil, err
	}
	cfg, err := d.Config(ctx, o)
	if err != nil {
		return nil, err
	}
	d.Enrollment = d.enrollmentOf(cfg, cas)
	return cfg, nil
}

// ReenrollESTCoAPS renews the device's certificate for the same key over
// EST-coaps (POST /est/sren on a session authenticated with it).
func (d *Device) ReenrollESTCoAPS(ctx context.Context, o EnrollOptions) error {
	cert, err := d.TLSCertificate()
	if err != nil {
		return err
	}
	conn, err := d.dial(ctx, o.Endpoint, cert)
	if err != nil {
		return fmt.Errorf("dtls dial: %w", err)
	}
	defer conn.Close()
	csr, err := d.CSR()
	if err != nil {
		return err
	}
	body, err := coapsDo(ctx, conn, codes.POST, ESTCoAPSRoot+"/sren", csr, codes.Changed)
	if err != nil {
		return err
	}
	issued, err := est.ParseCertsOnly(body)
	if err != nil {
		return fmt.Errorf("sren: %w", err)
	}
	return d.acceptChain(issued[0], d.Chain[1:])
}

// Config reads the device's config over mutual DTLS (GET /config, CBOR).
func (d *Device) Config(ctx context.Context, o EnrollOptions) (*wire.DeviceConfig, error) {
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	conn, err := d.dial(ctx, o.Endpoint, cert)
	if err != nil {
		return nil, fmt.Errorf("dtls dial: %w", err)
	}
	defer conn.Close()
	resp, err := conn.Get(ctx, "/config", message.Option{ID: message.Accept, Value: []byte{byte(wire.CBOR)}})
	if err != nil {
		return nil, fmt.Errorf("get /config: %w", err)
	}
	defer conn.ReleaseMessage(resp)
	var cfg wire.DeviceConfig
	if err := decodeAnswer(resp, codes.Content, wire.CBOR, &cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

var cfCertsOnly = func() []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, uint16(est.CFCertsOnly))
	return b
}()

// coapsDo sends one EST-coaps request (accepting 281) and returns the
// answer's payload; another code than want is an *Error with its Max-Age.
func coapsDo(ctx context.Context, conn *udpclient.Conn, method codes.Code, path string, body []byte, want codes.Code) ([]byte, error) {
	accept := message.Option{ID: message.Accept, Value: cfCertsOnly}
	var resp *pool.Message
	var err error
	if method == codes.GET {
		resp, err = conn.Get(ctx, path, accept)
	} else {
		resp, err = conn.Post(ctx, path, est.CFPKCS10, bytes.NewReader(body), accept)
	}
	if err != nil {
		return nil, fmt.Errorf("%v %s: %w", method, path, err)
	}
	defer conn.ReleaseMessage(resp)
	if resp.Code() != want {
		return nil, decodeAnswer(resp, want, 0, nil)
	}
	payload, err := resp.ReadBody()
	if err != nil {
		return nil, fmt.Errorf("%s: read answer: %w", path, err)
	}
	return payload, nil
}
