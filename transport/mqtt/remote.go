package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"
)

// SharedGroup is the shared-subscription group provisiond replicas join, so
// that each request is handled by exactly one of them.
const SharedGroup = "provisiond"

// serverFilters are what the server consumes from an external broker.
var serverFilters = []string{
	topics.BootstrapRoot + "/+/enroll/+",
	topics.DevicesRoot + "/+/state",
	topics.DevicesRoot + "/+/lease/renew",
	topics.DevicesRoot + "/+/renew/+",
}

// Remote connects the handler to an external broker (Mosquitto, EMQX, ...).
// The broker enforces the access rules (docs/operations.md gives a Mosquitto
// configuration); provisiond trusts the device ID in a topic because the
// broker only lets that device publish there.
type Remote struct {
	client paho.Client
	log    *slog.Logger
	// subscribed is set once the server-bound subscriptions of the current
	// connection are granted: only then are requests consumed.
	subscribed atomic.Bool
	// life is the context of the requests the broker delivers; Shutdown
	// cancels it.
	life context.Context
	stop context.CancelFunc
	// window holds a token for each message published and not yet
	// acknowledged (Publish).
	window chan struct{}
}

// RemoteConfig configures the connection to an external broker.
type RemoteConfig struct {
	URL      string      // mqtts://host:port (mqtt:// only for development)
	TLS      *tls.Config // trusts the broker; carries the service certificate
	ClientID string      // unique per replica
}

// DialRemote starts connecting to the broker and subscribes to the
// server-bound topics once connected. It does not wait for the broker: the
// connection is retried every few seconds (the broker may start after
// provisiond, for instance because it needs a certificate from provisiond's
// CA), and re-established whenever it is lost. ctx bounds only the set-up.
func DialRemote(ctx context.Context, cfg RemoteConfig, h *Handler, log *slog.Logger) (*Remote, error) {
	r := &Remote{log: log, window: make(chan struct{}, publishWindow)}
	r.life, r.stop = context.WithCancel(context.Background())
	opts := paho.NewClientOptions().
		AddBroker(cfg.URL).
		SetClientID(cfg.ClientID).
		SetTLSConfig(cfg.TLS).
		SetCleanSession(true).
		SetOrderMatters(false). // handle requests concurrently
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(2 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetOnConnectHandler(func(c paho.Client) {
			// (Re)subscribe on every connect: the session is clean.
			filters := map[string]byte{}
			for _, f := range serverFilters {
				filters["$share/"+SharedGroup+"/"+f] = 1
			}
			tok := c.SubscribeMultiple(filters, func(_ paho.Client, m paho.Message) {
				h.Handle(r.life, m.Topic(), m.Payload(), netip.AddrPort{}, "")
			})
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				r.subscribed.Store(true)
				log.Info("subscribed to the external broker", "filters", len(filters))
			} else {
				log.Error("subscribe on the external broker failed", "err", tok.Error())
			}
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			r.subscribed.Store(false)
			log.Warn("lost the external MQTT broker; reconnecting", "err", err)
		})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.pub = r // the remote broker is where this handler answers
	r.client = paho.NewClient(opts)
	tok := r.client.Connect()
	if tok.WaitTimeout(3*time.Second) && tok.Error() != nil {
		return nil, fmt.Errorf("connect to MQTT broker %s: %w", cfg.URL, tok.Error())
	}
	log.Info("using external MQTT broker", "url", cfg.URL, "client_id", cfg.ClientID, "connected", r.client.IsConnectionOpen())
	return r, nil
}

// Connected reports whether the broker connection is up and its
// subscriptions are granted: requests are being consumed.
func (r *Remote) Connected() bool { return r.subscribed.Load() && r.client.IsConnectionOpen() }

// publishWindow is how many messages Remote.Publish keeps in flight, waiting
// for the broker's acknowledgement.
const publishWindow = 256

// Publish sends a message at QoS 1 without waiting for the broker's
// acknowledgement: up to publishWindow messages are in flight, and beyond
// that Publish waits for one of them (10 s at most). What the broker does not
// acknowledge within 10 s is logged, as every caller would (configs, replies
// and cleared configs are all sent again or asked for again). Waiting for each
// acknowledgement in turn made a site-wide push a round trip per device: 10,000
// devices on Mosquitto waited 27-43 s for their config, against 1.5-3 s on the
// embedded broker. paho sends messages in order, so the last config published
// for a device is still the one the broker retains.
func (r *Remote) Publish(topic string, payload []byte, retain bool) error {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case r.window <- struct{}{}:
	case <-t.C:
		return fmt.Errorf("publish: %d messages unacknowledged for 10s", publishWindow)
	}
	tok := r.client.Publish(topic, 1, retain, payload)
	go func() {
		defer func() { <-r.window }()
		switch {
		case !tok.WaitTimeout(10 * time.Second):
			r.log.Warn("publish: no acknowledgement within 10s", "topic", topic)
		case tok.Error() != nil:
			r.log.Warn("publish", "topic", topic, "err", tok.Error())
		}
	}()
	return nil
}

// Shutdown disconnects, letting in-flight messages go out.
func (r *Remote) Shutdown(context.Context) error {
	r.client.Disconnect(500)
	r.stop()
	return nil
}

// CutDevice clears a revoked device's retained config on the external broker.
// Cutting its session is the broker's business: with Mosquitto, through the
// revocation list (docs/operations.md).
func (r *Remote) CutDevice(id uuid.UUID) {
	if err := r.Publish(topics.Config(id.String()), nil, true); err != nil {
		r.log.Warn("clear retained config", "device_id", id, "err", err)
	}
}
