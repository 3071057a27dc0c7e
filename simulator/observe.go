package simulator

import (
	"context"
	"fmt"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"

	"github.com/provisiond/provisiond/transport/wire"
)

// ConfigObservation is an open mutual-DTLS session observing /config.
type ConfigObservation struct {
	Configs <-chan wire.DeviceConfig // the current config first, then every change
	stop    func()
}

// Stop cancels the observation and closes the session.
func (o *ConfigObservation) Stop() { o.stop() }

// ObserveConfig opens a mutual-DTLS session and observes the device's
// /config (RFC 7641), as a mains-powered CoAP device would.
func (d *Device) ObserveConfig(ctx context.Context, o EnrollOptions) (*ConfigObservation, error) {
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	conn, err := d.dial(ctx, o.Endpoint, cert)
	if err != nil {
		return nil, fmt.Errorf("dtls dial: %w", err)
	}
	ch := make(chan wire.DeviceConfig, 8)
	obs, err := conn.Observe(ctx, "/config", func(m *pool.Message) {
		if m.Code() != codes.Content {
			return
		}
		body, err := m.ReadBody()
		if err != nil {
			return
		}
		var cfg wire.DeviceConfig
		if wire.Unmarshal(wire.CBOR, body, &cfg) == nil {
			select {
			case ch <- cfg:
			default:
			}
		}
	}, message.Option{ID: message.Accept, Value: []byte{byte(wire.CBOR)}})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("observe /config: %w", err)
	}
	return &ConfigObservation{Configs: ch, stop: func() {
		_ = obs.Cancel(context.Background())
		conn.Close()
	}}, nil
}

// ReportStateCoAP reports the device's state with POST /state over mutual DTLS.
func (d *Device) ReportStateCoAP(ctx context.Context, o EnrollOptions, rep wire.StateReport) error {
	cert, err := d.TLSCertificate()
	if err != nil {
		return err
	}
	body, err := wire.Marshal(wire.CBOR, rep)
	if err != nil {
		return err
	}
	o.Format = wire.CBOR
	return d.post(ctx, o, cert, "/state", body, codes.Changed, nil)
}
