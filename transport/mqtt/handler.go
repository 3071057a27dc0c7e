// Package mqtt serves provisiond over MQTT: bootstrap (enrollment) for
// devices that speak MQTT rather than CoAP, and every enrolled device's
// operational channel (its config pushed retained, its state reports, lease
// renewal). It runs an embedded broker (mochi-mqtt) by default, or works
// through any broker by URL with a paho client that takes the server's
// share of requests through a shared subscription.
//
// The same enrollment workflow and error codes as on CoAP apply: MQTT
// answers carry the CoAP code as text ("4.01") in a wire.Reply.
// docs/protocol.md lists the topics, payloads and the access rules.
package mqtt

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/bootstrap"
	"github.com/provisiond/provisiond/transport/wire"
)

// Publisher sends a message to the broker.
type Publisher interface {
	Publish(topic string, payload []byte, retain bool) error
}

// Operations is what the operational channel needs of the enrollment service.
type Operations interface {
	Config(ctx context.Context, id uuid.UUID) (enroll.DeviceConfig, error)
	ReportState(ctx context.Context, id uuid.UUID, rep enroll.StateReport, source string) error
}

// Handler turns device messages into calls on the enrollment service and
// publishes the answers. It is the same behind the embedded broker and an
// external one.
type Handler struct {
	boot *bootstrap.Handler
	ops  Operations
	pub  Publisher
	log  *slog.Logger
}

// NewHandler returns a handler for NewBroker or DialRemote, which give it
// the connection it publishes its answers on. observe, when not nil, hears
// every enrollment request's result and duration (metrics).
func NewHandler(enroller bootstrap.Enroller, ops Operations, observe func(transport, result string, d time.Duration), log *slog.Logger) *Handler {
	return &Handler{boot: &bootstrap.Handler{Enroller: enroller, Transport: "mqtt", Log: log, Observe: observe}, ops: ops, log: log}
}

// Handle processes a message published on a server-bound topic. src is the
// device's address when known (embedded broker), the zero value otherwise.
// certSerial is the serial of the certificate the publisher authenticated
// with ("" behind an external broker). It reports whether the topic was
// server-bound.
func (h *Handler) Handle(ctx context.Context, topic string, payload []byte, src netip.AddrPort, certSerial string) bool {
	p := topics.Parse(topic)
	switch p.Kind {
	case topics.KindEnroll:
		a := h.boot.Enroll(ctx, p.Format, payload, src)
		h.reply(topics.Result(p.ClientID), p.Format, a)
	case topics.KindRenewLease:
		a := h.boot.RenewLease(ctx, wire.JSON, p.DeviceID, src)
		h.reply(topics.Lease(p.DeviceID.String()), wire.JSON, a)
	case topics.KindRenewCert:
		a := h.boot.Renew(ctx, p.Format, p.DeviceID, certSerial, payload, src)
		h.reply(topics.Certificate(p.DeviceID.String()), p.Format, a)
	case topics.KindState:
		var rep wire.StateReport
		if err := wire.Unmarshal(wire.JSON, payload, &rep); err != nil {
			h.log.Info("state report refused", "device_id", p.DeviceID, "err", err)
			return true
		}
		if err := h.ops.ReportState(ctx, p.DeviceID, enroll.StateReport{ConfigVersion: rep.ConfigVersion,
			FirmwareVersion: rep.FirmwareVersion, Health: rep.Health}, src.String()); err != nil {
			h.log.Info("state report refused", "device_id", p.DeviceID, "err", err)
		}
	default:
		return false
	}
	return true
}

func (h *Handler) reply(topic string, f wire.Format, a bootstrap.Answer) {
	body, err := wire.Marshal(f, a.Reply())
	if err != nil {
		h.log.Error("encode mqtt reply", "err", err)
		return
	}
	if err := h.pub.Publish(topic, body, false); err != nil {
		h.log.Warn("publish mqtt reply", "topic", topic, "err", err)
	}
}

// ConfigChanged publishes a device's config, retained, on its config topic
// (enroll.Notifier).
func (h *Handler) ConfigChanged(id uuid.UUID, cfg enroll.DeviceConfig) {
	body, err := wire.Marshal(wire.JSON, bootstrap.Config(id, cfg))
	if err != nil {
		h.log.Error("encode device config", "err", err)
		return
	}
	if err := h.pub.Publish(topics.Config(id.String()), body, true); err != nil {
		h.log.Warn("publish device config", "device_id", id, "err", err)
	}
}

// PushConfig publishes a device's current config (after a reconnect, or a
// broker restart that lost retained messages).
func (h *Handler) PushConfig(ctx context.Context, id uuid.UUID) {
	cfg, err := h.ops.Config(ctx, id)
	if err != nil {
		h.log.Info("no config to push", "device_id", id, "err", err)
		return
	}
	h.ConfigChanged(id, cfg)
}

var _ enroll.Notifier = (*Handler)(nil)

var _ Operations = (*enroll.Service)(nil)
