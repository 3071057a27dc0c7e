package simulator

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/options"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/lwm2m"
)

// LwM2MOptions say how a simulated LwM2M client bootstraps.
type LwM2MOptions struct {
	Endpoint string // coaps://host:port of the bootstrap server; "" the bundle's
	// Name is the endpoint name sent as ep= (and the PSK identity); "" the serial.
	Name string
	// PSKIdentity, when set, is the PSK identity in place of Name.
	PSKIdentity string
	// Format is sent as pct=; 0 sends none (the server writes TLV).
	Format message.MediaType
	// PSK authenticates the session with the bundle's bootstrap PSK; false
	// with its factory certificate (IDevID), or Certificate when set.
	PSK bool
	// Certificate, with PSK false, authenticates with provisiond's device
	// certificate from an earlier enrollment (d.TLSCertificate).
	Certificate bool
	// NoDiscover answers Bootstrap-Discover with 4.04 (an LwM2M 1.0
	// client); NoWLAN leaves object 12 out of the Discover answer.
	NoDiscover, NoWLAN bool
	// FinishAnswer is the answer to Bootstrap-Finish; 0 checks what was
	// written and answers 2.04, or 4.06 when it is inconsistent.
	FinishAnswer codes.Code
	// MuteWrites never answers a Write: a client that hangs.
	MuteWrites bool
}

// LwM2MBootstrap is what a bootstrap wrote, as the client decoded it.
type LwM2MBootstrap struct {
	Format    message.MediaType // the content-format the Writes came in
	Discover  bool              // the server sent Bootstrap-Discover
	Deleted   bool              // the server sent Bootstrap-Delete /
	Instances []lwm2m.Instance  // each Write, decoded, in order
	// The management server account.
	ServerURI     string
	Mode          lwm2m.SecurityMode
	ShortServerID int64
	Lifetime      int64
	Binding       string
	ServerCA      *x509.Certificate // resource 4, when given
	// Certificate mode: the certificate and key written (checked: the
	// certificate chains to the flashed root and certifies the key).
	Cert *x509.Certificate
	Key  crypto.Signer
	// PSK mode: the identity and key.
	PSKIdentity string
	PSK         []byte
	// The WLAN instance, when written.
	SSID, KeyPhrase string
}

// lwm2mClient is the client side of a bootstrap: it serves the bootstrap
// server's requests on the session and keeps what they wrote.
type lwm2mClient struct {
	o        LwM2MOptions
	mu       sync.Mutex
	res      LwM2MBootstrap
	finished chan codes.Code // the answer given to Finish
	mute     chan struct{}
	errs     []error
}

func (c *lwm2mClient) handle(w mux.ResponseWriter, m *mux.Message) {
	path, _ := m.Options().Path()
	path = "/" + strings.TrimPrefix(path, "/")
	if m.Code() == codes.PUT && c.o.MuteWrites {
		<-c.mute
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case m.Code() == codes.GET && path == "/":
		c.res.Discover = true
		if c.o.NoDiscover {
			_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
			return
		}
		links := "</>;lwm2m=1.1,</0/0>,</1>,</3/0>"
		if !c.o.NoWLAN {
			links += ",</12>"
		}
		_ = w.SetResponse(codes.Content, message.AppLinkFormat, strings.NewReader(links))
	case m.Code() == codes.DELETE && path == "/":
		c.res.Deleted, c.res.Instances = true, nil
		_ = w.SetResponse(codes.Deleted, message.TextPlain, nil)
	case m.Code() == codes.PUT:
		p, err := lwm2m.ParsePath(path)
		if err != nil || len(p.IDs) != 2 {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, strings.NewReader("write whole instances"))
			return
		}
		cf, err := m.ContentFormat()
		if err != nil {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, strings.NewReader("no content-format"))
			return
		}
		body, _ := io.ReadAll(m.Body())
		in, err := lwm2m.DecodeInstance(p.IDs[0], p.IDs[1], cf, body, lwm2m.Kinds[p.IDs[0]])
		if err != nil {
			c.errs = append(c.errs, err)
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, strings.NewReader(err.Error()))
			return
		}
		c.res.Format = cf
		c.res.Instances = append(c.res.Instances, in)
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case m.Code() == codes.POST && path == "/bs":
		ans := codes.Changed
		if err := c.read(); err != nil {
			c.errs = append(c.errs, err)
			ans = codes.NotAcceptable
		}
		if c.o.FinishAnswer != 0 {
			ans = c.o.FinishAnswer
		}
		_ = w.SetResponse(ans, message.TextPlain, nil)
		select {
		case c.finished <- ans:
		default:
		}
	default:
		_ = w.SetResponse(codes.MethodNotAllowed, message.TextPlain, nil)
	}
}

// read checks what was written as a client does at Finish: a management
// server's Security instance with a Server instance of the same short ID.
func (c *lwm2mClient) read() error {
	var sec, srv *lwm2m.Instance
	for i, in := range c.res.Instances {
		switch in.Object {
		case lwm2m.ObjSecurity:
			sec = &c.res.Instances[i]
		case lwm2m.ObjServer:
			srv = &c.res.Instances[i]
		case lwm2m.ObjWLAN:
			for _, r := range in.Resources {
				switch r.ID {
				case 5:
					c.res.SSID = r.Value.Str
				case 18:
					c.res.KeyPhrase = r.Value.Str
				}
			}
		}
	}
	if sec == nil || srv == nil {
		return errors.New("no management server account (Security and Server instances)")
	}
	var secID int64
	var identity, secret, serverKey []byte
	for _, r := range sec.Resources {
		switch r.ID {
		case 0:
			c.res.ServerURI = r.Value.Str
		case 2:
			n, _ := r.Value.AsInt()
			c.res.Mode = lwm2m.SecurityMode(n)
		case 3:
			identity = r.Value.Bytes
		case 4:
			serverKey = r.Value.Bytes
		case 5:
			secret = r.Value.Bytes
		case 10:
			secID, _ = r.Value.AsInt()
		}
	}
	for _, r := range srv.Resources {
		switch r.ID {
		case 0:
			c.res.ShortServerID, _ = r.Value.AsInt()
		case 1:
			c.res.Lifetime, _ = r.Value.AsInt()
		case 7:
			c.res.Binding = r.Value.Str
		}
	}
	if secID != c.res.ShortServerID {
		return fmt.Errorf("the Security instance is for server %d, the Server instance %d", secID, c.res.ShortServerID)
	}
	if u, err := url.Parse(c.res.ServerURI); err != nil || u.Scheme != "coaps" {
		return fmt.Errorf("server URI %q: want coaps://", c.res.ServerURI)
	}
	if len(serverKey) > 0 {
		ca, err := x509.ParseCertificate(serverKey)
		if err != nil {
			return fmt.Errorf("server public key: %w", err)
		}
		c.res.ServerCA = ca
	}
	switch c.res.Mode {
	case lwm2m.ModePSK:
		if len(identity) == 0 || len(secret) < 16 {
			return errors.New("psk mode without an identity or a key of 16 bytes")
		}
		c.res.PSKIdentity, c.res.PSK = string(identity), secret
	case lwm2m.ModeCertificate:
		cert, err := x509.ParseCertificate(identity)
		if err != nil {
			return fmt.Errorf("client certificate: %w", err)
		}
		k, err := x509.ParsePKCS8PrivateKey(secret)
		if err != nil {
			return fmt.Errorf("client key: %w", err)
		}
		key, ok := k.(crypto.Signer)
		if !ok || !publicKeysEqual(key.Public(), cert.PublicKey) {
			return errors.New("the key written is not the certificate's")
		}
		c.res.Cert, c.res.Key = cert, key
	case lwm2m.ModeEST:
	default:
		return fmt.Errorf("security mode %d", c.res.Mode)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	x, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && x.Equal(b)
}

// BootstrapLwM2M runs an LwM2M client-initiated bootstrap as a stock
// client does: a DTLS session authenticated with the bootstrap PSK or a
// certificate, POST /bs?ep=NAME[&pct=F], then it serves Discover, Delete,
// the Writes and Finish, checking what was written. In EST mode (security
// mode 4) it then enrolls over EST-coaps on the same session. A
// certificate written or enrolled must chain to the flashed root.
func (d *Device) BootstrapLwM2M(ctx context.Context, o LwM2MOptions) (*LwM2MBootstrap, error) {
	name := o.Name
	if name == "" {
		name = d.Bundle.Serial
	}
	c := &lwm2mClient{o: o, finished: make(chan codes.Code, 1), mute: make(chan struct{})}
	defer close(c.mute)
	set, err := d.lwm2mCredentials(o, name)
	if err != nil {
		return nil, err
	}
	r := mux.NewRouter()
	r.DefaultHandle(mux.HandlerFunc(c.handle))
	conn, err := d.dialWith(ctx, o.Endpoint, set, options.WithMux(r))
	if err != nil {
		return nil, fmt.Errorf("dtls dial: %w", err)
	}
	defer conn.Close()
	opts := []message.Option{{ID: message.URIQuery, Value: []byte("ep=" + name)}}
	if o.Format != 0 {
		opts = append(opts, message.Option{ID: message.URIQuery, Value: fmt.Appendf(nil, "pct=%d", o.Format)})
	}
	resp, err := conn.Post(ctx, "/bs", message.TextPlain, bytes.NewReader(nil), opts...)
	if err != nil {
		return nil, fmt.Errorf("Bootstrap-Request: %w", err)
	}
	if resp.Code() != codes.Changed {
		err := decodeAnswer(resp, codes.Changed, 0, nil)
		conn.ReleaseMessage(resp)
		return nil, fmt.Errorf("Bootstrap-Request: %w", err)
	}
	conn.ReleaseMessage(resp)
	var ans codes.Code
	select {
	case ans = <-c.finished:
	case <-ctx.Done():
		return nil, fmt.Errorf("bootstrap: no Bootstrap-Finish: %w", ctx.Err())
	case <-conn.Done():
		return nil, errors.New("bootstrap: the server closed the session before Bootstrap-Finish")
	}
	c.mu.Lock()
	res, errs := c.res, c.errs
	c.mu.Unlock()
	if ans != codes.Changed {
		return &res, fmt.Errorf("bootstrap: Finish answered %v: %w", ans, errors.Join(errs...))
	}
	if res.Cert != nil {
		// The Security object has room for the certificate alone (no
		// intermediate): the device takes the key written as its own.
		d.Key, d.Chain = res.Key, []*x509.Certificate{res.Cert}
	}
	if res.Mode == lwm2m.ModeEST {
		if res.Cert, res.Key, err = d.lwm2mEST(ctx, conn); err != nil {
			return &res, err
		}
		return &res, nil
	}
	// The answer to Finish goes out after the handler returned: the client
	// leaves the session to the server, which closes it, rather than close
	// it under its own answer.
	select {
	case <-conn.Done():
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
	}
	return &res, nil
}

// lwm2mCredentials sets the session's credentials: the bootstrap PSK
// (identity: the endpoint name), the device certificate, or the IDevID.
func (d *Device) lwm2mCredentials(o LwM2MOptions, name string) (func(*piondtls.Config), error) {
	switch {
	case o.PSK:
		psk, err := hex.DecodeString(d.Bundle.LwM2MPSK)
		if err != nil || len(psk) == 0 {
			return nil, fmt.Errorf("bundle %s has no LwM2M bootstrap PSK (provctl factory mint --lwm2m-psk)", d.Bundle.Serial)
		}
		return func(cfg *piondtls.Config) {
			cfg.PSK = func([]byte) ([]byte, error) { return psk, nil }
			cfg.PSKIdentityHint = []byte(name)
			if o.PSKIdentity != "" {
				cfg.PSKIdentityHint = []byte(o.PSKIdentity)
			}
			cfg.CipherSuites = []piondtls.CipherSuiteID{piondtls.TLS_PSK_WITH_AES_128_CCM_8}
		}, nil
	case o.Certificate:
		cert, err := d.TLSCertificate()
		if err != nil {
			return nil, err
		}
		return func(cfg *piondtls.Config) { cfg.Certificates = append(cfg.Certificates, *cert) }, nil
	}
	factory, err := d.FactoryIdentity()
	if err != nil {
		return nil, err
	}
	if factory == nil {
		return nil, fmt.Errorf("bundle %s has neither an LwM2M PSK nor a factory certificate", d.Bundle.Serial)
	}
	return func(cfg *piondtls.Config) { cfg.Certificates = append(cfg.Certificates, *factory) }, nil
}

// lwm2mEST enrolls with EST-coaps on the bootstrap session (security mode
// 4) for the device's key: GET /est/crts, POST /est/sen, the certificate
// checked against the flashed root.
func (d *Device) lwm2mEST(ctx context.Context, conn *udpclient.Conn) (*x509.Certificate, crypto.Signer, error) {
	body, err := coapsDo(ctx, conn, codes.GET, ESTCoAPSRoot+"/crts", nil, codes.Content)
	if err != nil {
		return nil, nil, err
	}
	cas, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, nil, fmt.Errorf("crts: %w", err)
	}
	csr, err := d.CSR()
	if err != nil {
		return nil, nil, err
	}
	if body, err = coapsDo(ctx, conn, codes.POST, ESTCoAPSRoot+"/sen", csr, codes.Changed); err != nil {
		return nil, nil, err
	}
	issued, err := est.ParseCertsOnly(body)
	if err != nil {
		return nil, nil, fmt.Errorf("sen: %w", err)
	}
	if err := d.acceptChain(issued[0], cas); err != nil {
		return nil, nil, err
	}
	return issued[0], d.Key, nil
}
