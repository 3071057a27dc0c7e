package floor_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/provisiond/provisiond/transport/mqtt/topics"
	"github.com/provisiond/provisiond/transport/wire"
)

// serveBareMQTT starts the bare MQTT server on a loopback port: mochi's
// broker on its own TLS listener (Go's crypto/tls, a client certificate
// requested as provisiond's broker does), with provisiond's capability
// limits. A hook lets every client in and answers each request published
// on a bootstrap enroll topic on its result topic, as provisiond does, in
// mochi's read goroutine: the CSR checked and signed, the answer a CBOR
// reply. It has no claim-token check, no access rules, no inventory, no
// lease and no audit.
func serveBareMQTT(ca *bareCA) (addr string, stop func(), answered *atomic.Int64, err error) {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 64 * 1024
	caps.MaximumClientWritesPending = 64
	srv := mochi.New(&mochi.Options{InlineClient: true, Capabilities: caps,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	answered = new(atomic.Int64)
	if err := srv.AddHook(&bareHook{srv: srv, ca: ca, answered: answered}, nil); err != nil {
		return "", nil, nil, err
	}
	// mochi's listener binds the address it is given; take a free port
	// first, as provisiond's tests do.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	addr = probe.Addr().String()
	_ = probe.Close()
	l := listeners.NewTCP(listeners.Config{ID: "bare", Address: addr, TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{ca.serverCert}, ClientAuth: tls.RequestClientCert,
	}})
	if err := srv.AddListener(l); err != nil {
		return "", nil, nil, err
	}
	if err := srv.Serve(); err != nil {
		return "", nil, nil, err
	}
	return addr, func() { _ = srv.Close() }, answered, nil
}

// bareHook is the bare MQTT server's enrollment.
type bareHook struct {
	mochi.HookBase
	srv      *mochi.Server
	ca       *bareCA
	answered *atomic.Int64
}

func (h *bareHook) ID() string { return "bare" }

func (h *bareHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish}, []byte{b})
}

func (h *bareHook) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (h *bareHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func (h *bareHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	p := topics.Parse(pk.TopicName)
	if cl.Net.Inline || p.Kind != topics.KindEnroll {
		return pk, nil
	}
	reply := wire.Reply{Status: "2.01"}
	resp, err := h.ca.enrollResponse(pk.Payload)
	if err != nil {
		reply = wire.Reply{Status: "4.00", Error: &wire.Error{Code: "bad_request", Message: err.Error()}}
	} else {
		reply.Enrollment = resp
	}
	body, err := wire.Marshal(wire.CBOR, reply)
	if err == nil {
		err = h.srv.Publish(topics.Result(p.ClientID), body, false, 0)
	}
	if err == nil && resp != nil {
		h.answered.Add(1)
	}
	return pk, nil
}
