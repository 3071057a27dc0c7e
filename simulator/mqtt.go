package simulator

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/transport/wire"
)

// MQTTOptions tune an MQTT exchange.
type MQTTOptions struct {
	Broker string      // overrides the bundle's first mqtts:// endpoint (URL or host:port)
	Format wire.Format // CBOR or JSON (default) for enrollment
	// Factory enrolls with the bundle's factory certificate (IDevID) as
	// the TLS client certificate and no claim token.
	Factory bool
	// OnConnectionLost is called when the session ends other than by Close
	// (the server cut it, or the network failed).
	OnConnectionLost func(error)
}

// broker returns paho's address for the MQTT endpoint and the host name to verify.
func (d *Device) broker(override string) (string, string, error) {
	u, err := d.endpointURL(override, "mqtts", "mqtt")
	if err != nil {
		return "", "", err
	}
	if u.Scheme == "mqtt" {
		return "tcp://" + u.Host, u.Hostname(), nil
	}
	return "ssl://" + u.Host, u.Hostname(), nil
}

func (d *Device) mqttClient(ctx context.Context, o MQTTOptions, clientID string, cert *tls.Certificate) (paho.Client, error) {
	addr, host, err := d.broker(o.Broker)
	if err != nil {
		return nil, err
	}
	tc := &tls.Config{
		ServerName: host, MinVersion: tls.VersionTLS12, CurvePreferences: d.curves(),
		// Same check as for DTLS, remembering fully verified chains (verify.go).
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyServer([]byte(d.Bundle.RootCA), d.roots, host, raw)
		},
	}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	opts := paho.NewClientOptions().AddBroker(addr).SetClientID(clientID).SetTLSConfig(tc).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetOrderMatters(false)
	if o.OnConnectionLost != nil {
		opts.SetConnectionLostHandler(func(_ paho.Client, err error) { o.OnConnectionLost(err) })
	}
	c := paho.NewClient(opts)
	if err := wait(ctx, c.Connect()); err != nil {
		return nil, fmt.Errorf("mqtt connect: %w", err)
	}
	return c, nil
}

func wait(ctx context.Context, t paho.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// subscribe subscribes and fails when the broker refuses the filter.
func subscribe(ctx context.Context, c paho.Client, filter string, h paho.MessageHandler) error {
	t := c.Subscribe(filter, 1, h)
	if err := wait(ctx, t); err != nil {
		return err
	}
	if st, ok := t.(*paho.SubscribeToken); ok {
		if q, found := st.Result()[filter]; found && q >= 0x80 {
			return fmt.Errorf("subscribe %s: refused by the broker", filter)
		}
	}
	return nil
}

// Nonce returns a fresh bootstrap client ID, "boot-" and 22 random characters.
func Nonce() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	b := make([]byte, 22)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "boot-" + string(b)
}

// EnrollMQTT runs the bootstrap over MQTT: connect over TLS without a client
// certificate as boot-<nonce>, subscribe to the result topic, publish the
// request, wait for the reply, and check it as Enroll does.
func (d *Device) EnrollMQTT(ctx context.Context, o MQTTOptions) (*wire.EnrollResponse, error) {
	if o.Format == 0 {
		o.Format = wire.JSON
	}
	var body []byte
	var cert *tls.Certificate
	var err error
	if o.Factory {
		if cert, err = d.FactoryIdentity(); err == nil && cert == nil {
			err = fmt.Errorf("bundle %s has no factory certificate", d.Bundle.Serial)
		}
		if err != nil {
			return nil, err
		}
		csr, err := d.CSR()
		if err != nil {
			return nil, err
		}
		body, err = wire.Marshal(o.Format, wire.EnrollRequest{CSR: csr, Model: d.Bundle.Model, FirmwareVersion: "sim-1.0.0"})
		if err != nil {
			return nil, err
		}
	} else if body, err = d.enrollRequest(o.Format); err != nil {
		return nil, err
	}
	cid := Nonce()
	c, err := d.mqttClient(ctx, o, cid, cert)
	if err != nil {
		return nil, err
	}
	defer c.Disconnect(0)
	replies := make(chan []byte, 1)
	if err := subscribe(ctx, c, topics.Result(cid), func(_ paho.Client, m paho.Message) {
		select {
		case replies <- m.Payload():
		default:
		}
	}); err != nil {
		return nil, err
	}
	if err := wait(ctx, c.Publish(topics.Enroll(cid, o.Format), 1, false, body)); err != nil {
		return nil, fmt.Errorf("mqtt publish: %w", err)
	}
	var raw []byte
	select {
	case raw = <-replies:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the enrollment reply: %w", ctx.Err())
	}
	var r wire.Reply
	if err := wire.Unmarshal(o.Format, raw, &r); err != nil {
		return nil, fmt.Errorf("reply: %w", err)
	}
	if err := replyError(r, "2.01"); err != nil {
		return nil, err
	}
	if r.Enrollment == nil {
		return nil, errors.New("reply carries no enrollment")
	}
	chain, err := d.verify(r.Enrollment)
	if err != nil {
		return nil, err
	}
	d.Enrollment, d.Chain = r.Enrollment, chain
	return r.Enrollment, nil
}

// replyError turns a non-success reply into an *Error with the same CoAP code.
func replyError(r wire.Reply, want string) error {
	if r.Status == want {
		return nil
	}
	e := &Error{Code: parseCode(r.Status)}
	if r.Error != nil {
		e.Body = *r.Error
		e.MaxAge = time.Duration(r.Error.RetryAfter) * time.Second
	}
	return e
}

func parseCode(s string) codes.Code {
	class, detail, ok := strings.Cut(s, ".")
	c, err1 := strconv.Atoi(class)
	dd, err2 := strconv.Atoi(detail)
	if !ok || err1 != nil || err2 != nil {
		return codes.InternalServerError
	}
	return codes.Code(c<<5 | dd)
}

// Session is an enrolled device's operational MQTT connection (mutual TLS).
type Session struct {
	d       *Device
	c       paho.Client
	configs chan wire.DeviceConfig
	leases  chan []byte
}

// ConnectMQTT opens the operational channel with the issued certificate and
// subscribes to the device's config and lease topics.
func (d *Device) ConnectMQTT(ctx context.Context, o MQTTOptions) (*Session, error) {
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	id := d.Enrollment.DeviceID
	c, err := d.mqttClient(ctx, o, id, cert)
	if err != nil {
		return nil, err
	}
	s := &Session{d: d, c: c, configs: make(chan wire.DeviceConfig, 8), leases: make(chan []byte, 1)}
	if err := subscribe(ctx, c, topics.Config(id), func(_ paho.Client, m paho.Message) {
		var cfg wire.DeviceConfig
		if wire.Unmarshal(wire.JSON, m.Payload(), &cfg) == nil {
			// A device that is busy keeps the newest configs: when the
			// queue is full the oldest goes.
			for {
				select {
				case s.configs <- cfg:
					return
				default:
				}
				select {
				case <-s.configs:
				default:
				}
			}
		}
	}); err != nil {
		c.Disconnect(0)
		return nil, err
	}
	if err := subscribe(ctx, c, topics.Lease(id), func(_ paho.Client, m paho.Message) {
		select {
		case s.leases <- m.Payload():
		default:
		}
	}); err != nil {
		c.Disconnect(0)
		return nil, err
	}
	return s, nil
}

// Client is the underlying paho client (tests use it to try what a device must not do).
func (s *Session) Client() paho.Client { return s.c }

// Config waits for the next config pushed to the device.
func (s *Session) Config(ctx context.Context) (wire.DeviceConfig, error) {
	select {
	case c := <-s.configs:
		return c, nil
	case <-ctx.Done():
		return wire.DeviceConfig{}, fmt.Errorf("waiting for config: %w", ctx.Err())
	}
}

// ReportState publishes the device's state.
func (s *Session) ReportState(ctx context.Context, rep wire.StateReport) error {
	body, err := wire.Marshal(wire.JSON, rep)
	if err != nil {
		return err
	}
	return wait(ctx, s.c.Publish(topics.State(s.d.Enrollment.DeviceID), 1, false, body))
}

// RenewLease asks for a lease renewal and waits for the reply.
func (s *Session) RenewLease(ctx context.Context) (*wire.LeaseResponse, error) {
	if err := wait(ctx, s.c.Publish(topics.RenewLease(s.d.Enrollment.DeviceID), 1, false, []byte("{}"))); err != nil {
		return nil, err
	}
	select {
	case raw := <-s.leases:
		var r wire.Reply
		if err := wire.Unmarshal(wire.JSON, raw, &r); err != nil {
			return nil, err
		}
		if err := replyError(r, "2.04"); err != nil {
			return nil, err
		}
		return r.Lease, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the lease reply: %w", ctx.Err())
	}
}

// Close disconnects.
func (s *Session) Close() { s.c.Disconnect(100) }
