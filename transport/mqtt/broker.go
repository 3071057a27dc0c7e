package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/provisiond/provisiond/transport/bootstrap"
	"github.com/provisiond/provisiond/transport/mqtt/topics"

	"github.com/provisiond/provisiond/pki/profile"

	"github.com/google/uuid"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/provisiond/provisiond/internal/handshake"
	"github.com/provisiond/provisiond/internal/peers"
)

// Authorizer decides whether a verified device certificate may connect.
type Authorizer func(ctx context.Context, id uuid.UUID, certSerial string) error

// BrokerConfig configures the embedded broker.
type BrokerConfig struct {
	Addr         string                           // MQTT over TLS, e.g. ":8883"; empty disables
	InsecureAddr string                           // plain MQTT (development only); empty disables
	Certificate  func() (*tls.Certificate, error) // server certificate, asked at every handshake
	ClientCAs    *x509.CertPool                   // verifies device certificates
	Authorize    Authorizer                       // checks a device certificate against the inventory
	// Factory checks a client certificate that provisiond's CA did not
	// issue: a factory certificate (IDevID, leaf first) under a registered
	// manufacturer CA. Its session is a bootstrap session (client ID
	// boot-...) whose enrollment needs no claim token; nil refuses every
	// certificate from another CA.
	Factory func(ctx context.Context, chain []*x509.Certificate) error
	// MaxHandshakes bounds TLS handshakes (and bootstrap sessions not yet
	// answered) in progress; more wait up to HandshakeQueueWait (default
	// 5s) for a slot (package handshake). Default 64.
	MaxHandshakes      int
	HandshakeQueueWait time.Duration
	HandshakeTimeout   time.Duration // one TLS handshake; default 10s
}

// Broker is the embedded MQTT broker with provisiond's access rules.
type Broker struct {
	cfg     BrokerConfig
	srv     *mochi.Server
	handler *Handler
	log     *slog.Logger
	tls     *tlsListener
	plain   *listeners.TCP
	gate    *handshake.Gate
	access  *access
	// life is the context of the work the broker's hooks start (mochi's
	// hooks carry none); Shutdown cancels it.
	life context.Context
	stop context.CancelFunc
	// failed carries a listener's failure (Err).
	failed chan error
	// verified carries verifyPeer's findings from the handshake to CONNECT.
	verified peers.Verdicts

	mu   sync.Mutex
	done bool
}

// NewBroker returns a broker serving h; Start binds it.
func NewBroker(cfg BrokerConfig, h *Handler, log *slog.Logger) *Broker {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = 64 * 1024 // requests are 4 KiB at most; configs are small
	// mochi gives every client a queue of this many pending writes, allocated
	// at connect: its default of 8,192 pointers is 64 KiB per device, 640 MB
	// for 10,000 devices online. A device is sent a config, a lease or a
	// renewal reply at a time; 64 is plenty (a client whose queue is full is
	// too slow to read and gets the next message on reconnect, retained).
	caps.MaximumClientWritesPending = 64
	srv := mochi.New(&mochi.Options{InlineClient: true, Capabilities: caps, Logger: log.With("component", "mqtt")})
	b := &Broker{cfg: cfg, srv: srv, handler: h, log: log, failed: make(chan error, 1)}
	b.life, b.stop = context.WithCancel(context.Background())
	h.pub = b // the broker is where this handler answers
	return b
}

// Publish sends a message from the server (the broker's inline client, which
// is not subject to the access rules).
//
// It publishes at QoS 0. mochi v2.7.9 keeps the packet identifiers of both
// directions in one map (mochi-mqtt/server#545): a server delivery at QoS 1
// still waiting for its PUBACK makes the broker refuse a SUBSCRIBE that the
// device numbered the same, and a device PUBLISH with that number deletes
// the delivery without giving back its send quota, after which the device
// is sent nothing more. Both sides count identifiers up from 1, so this
// happens within a device's first few packets. QoS 1 would add nothing to
// what a device gets anyway: sessions are clean (a QoS 1 message is not
// kept across a reconnect), the config is retained and sent again at every
// connect and acknowledged by a state report, and replies answer requests
// that the device repeats when no answer comes.
func (b *Broker) Publish(topic string, payload []byte, retain bool) error {
	return b.srv.Publish(topic, payload, retain, 0)
}

// Start binds the listeners and serves in the background.
func (b *Broker) Start() error {
	b.access = &access{b: b, live: map[uuid.UUID][]*mochi.Client{}}
	if err := b.srv.AddHook(b.access, nil); err != nil {
		return err
	}
	if b.cfg.Addr != "" {
		n := b.cfg.MaxHandshakes
		if n <= 0 {
			n = handshake.DefaultSlots
		}
		wait, timeout := b.cfg.HandshakeQueueWait, b.cfg.HandshakeTimeout
		if wait <= 0 {
			wait = 5 * time.Second
		}
		if timeout <= 0 {
			timeout = 10 * time.Second
		}
		b.gate = handshake.NewGate(n, wait, wait)
		b.tls = &tlsListener{id: "mqtts", addr: b.cfg.Addr, gate: b.gate, timeout: timeout, ended: b.access.ended, failed: b.failed, cfg: &tls.Config{
			MinVersion: tls.VersionTLS12,
			// Any client certificate is taken at the handshake (which
			// proves the key); verifyPeer accepts devices' and
			// registered manufacturers' factory certificates.
			ClientAuth:            tls.RequestClientCert,
			VerifyPeerCertificate: b.verifyPeer,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
				c, err := b.cfg.Certificate()
				if err != nil {
					b.log.Error("server certificate renewal failed; presenting the current one", "err", err)
				}
				return c, nil
			},
		}}
		if err := b.srv.AddListener(b.tls); err != nil {
			return fmt.Errorf("listen mqtts %s: %w", b.cfg.Addr, err)
		}
	}
	if b.cfg.InsecureAddr != "" {
		b.plain = listeners.NewTCP(listeners.Config{ID: "mqtt", Address: b.cfg.InsecureAddr})
		if err := b.srv.AddListener(b.plain); err != nil {
			return fmt.Errorf("listen mqtt %s: %w", b.cfg.InsecureAddr, err)
		}
		b.log.Warn("plain MQTT (no TLS) listening: development only, claim tokens travel in clear", "addr", b.plain.Address())
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("serve mqtt: %w", err)
	}
	if b.tls != nil {
		b.log.Info("MQTT over TLS listening", "addr", b.tls.Address())
	}
	return nil
}

// Addr is the bound TLS address ("" when disabled).
func (b *Broker) Addr() string {
	if b.tls == nil {
		return ""
	}
	return b.tls.Address()
}

// Handshakes reports the TLS handshake gate (zero without a TLS listener).
func (b *Broker) Handshakes() handshake.Stats {
	if b.gate == nil {
		return handshake.Stats{}
	}
	return b.gate.Stats()
}

// InsecureAddr is the bound plain address ("" when disabled).
func (b *Broker) InsecureAddr() string { return address(b.plain) }

func address(l *listeners.TCP) string {
	if l == nil {
		return ""
	}
	return l.Address()
}

// CutDevice cuts a device's live sessions, if it has any, and clears its
// retained config (which holds the site's Wi-Fi passphrase). Reconnects are
// refused at CONNECT by Authorize.
//
// The sessions come from the access hook's own index, not from mochi's
// client list: a session enters the index before Authorize reads the
// inventory, so a revocation that commits after that read finds it here
// even if mochi has not listed the client yet.
func (b *Broker) CutDevice(id uuid.UUID) {
	cut := b.access.sessions(id)
	if cl, ok := b.srv.Clients.Get(id.String()); ok && !slices.Contains(cut, cl) {
		cut = append(cut, cl)
	}
	for _, cl := range cut {
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
	}
	if err := b.Publish(topics.Config(id.String()), nil, true); err != nil { // an empty retained message clears it
		b.log.Warn("clear retained config", "device_id", id, "err", err)
	}
}

// DeviceIDs lists the devices connected to this broker now.
func (b *Broker) DeviceIDs() []uuid.UUID {
	b.access.mu.Lock()
	defer b.access.mu.Unlock()
	ids := make([]uuid.UUID, 0, len(b.access.live))
	for id, cls := range b.access.live {
		if len(cls) > 0 {
			ids = append(ids, id)
		}
	}
	return ids
}

// Sessions counts connected devices (clients with a certificate).
func (b *Broker) Sessions() int {
	n := 0
	b.access.clients.Range(func(_, v any) bool {
		if v.(identity).device != uuid.Nil {
			n++
		}
		return true
	})
	return n
}

// Err reports a listener that stopped on its own (devices can no longer
// connect); it is the same channel at every call.
func (b *Broker) Err() <-chan error { return b.failed }

// Shutdown closes the listeners and every session. It is idempotent.
func (b *Broker) Shutdown(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.done {
		return nil
	}
	b.done = true
	b.stop()
	return b.srv.Close()
}

// identity is who a connected client is.
type identity struct {
	device     uuid.UUID // set for a device with a certificate; Nil for a bootstrap client
	certSerial string    // the certificate it connected with
	source     netip.AddrPort
	// factory is the factory certificate chain of a bootstrap session that
	// authenticated with one (an IDevID in place of the claim token).
	factory []*x509.Certificate
	// established: mochi has listed the session (OnSessionEstablished sets
	// it, storing a new identity value for the client).
	established bool
}

// access is the mochi hook that enforces provisiond's rules:
//   - a client with a certificate is an enrolled device: its client ID must be
//     the UUID its certificate names, the device must exist, not be revoked,
//     and the certificate must be its current one;
//   - a client without one is bootstrapping: its client ID must be
//     "boot-<nonce>", it may publish only its enrollment request and subscribe
//     only to its own result topic, never with wildcards;
//   - a device may only use topics under devices/<its id>/, may not publish to
//     the server's topics there (config, lease), and no client's message is
//     retained or may read $SYS.
//
// Server-bound messages are handled in the publishing client's goroutine.
type access struct {
	mochi.HookBase
	b       *Broker
	clients sync.Map // *mochi.Client -> identity

	mu     sync.Mutex
	live   map[uuid.UUID][]*mochi.Client // device sessions from CONNECT to disconnect, oldest first
	ending sync.Map                      // net.Conn -> uuid.UUID: device sessions mochi is closing
}

// sessions lists a device's sessions.
func (a *access) sessions(id uuid.UUID) []*mochi.Client {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.live[id])
}

func (a *access) addSession(id uuid.UUID, cl *mochi.Client) {
	a.mu.Lock()
	a.live[id] = append(a.live[id], cl)
	a.mu.Unlock()
}

func (a *access) dropSession(id uuid.UUID, cl *mochi.Client) {
	a.mu.Lock()
	defer a.mu.Unlock()
	rest := slices.DeleteFunc(a.live[id], func(c *mochi.Client) bool { return c == cl })
	if len(rest) == 0 {
		delete(a.live, id)
		return
	}
	a.live[id] = rest
}

// ended runs when mochi is completely done with a connection (the listener
// calls it).
//
// mochi v2.7.9 ends a clean session by removing its client ID from the
// client list and its filters from the topic index, by ID. When the device
// has already reconnected (it closed the old session and opened a new one at
// once, as after a certificate renewal) and mochi did not see the new
// session take the old one over, that removes the new session's entries: it
// would receive nothing more and could not be found to be cut. relist puts
// them back, here for a session established before the old one ended, and
// in OnSessionEstablished for one established after.
func (a *access) ended(conn net.Conn) {
	if v, ok := a.ending.LoadAndDelete(conn); ok {
		if live := a.sessions(v.(uuid.UUID)); len(live) > 0 {
			a.relist(live[len(live)-1])
		}
	}
}

// relist makes sure that a device's current session is in mochi's client
// list and topic index (see ended).
func (a *access) relist(cl *mochi.Client) {
	v, ok := a.clients.Load(cl)
	if !ok || !v.(identity).established || cl.Closed() {
		return // not listed by mochi yet (it will be), or gone
	}
	if live := a.sessions(v.(identity).device); len(live) == 0 || live[len(live)-1] != cl {
		return // a newer session of the device is the current one
	}
	srv := a.b.srv
	if cur, ok := srv.Clients.Get(cl.ID); !ok || cur != cl {
		srv.Clients.Add(cl)
		a.b.log.Debug("mqtt session listed again after its predecessor ended", "client_id", cl.ID)
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		srv.Topics.Subscribe(cl.ID, sub) // a no-op for a filter still indexed
	}
}

func (a *access) ID() string { return "provisiond-access" }

func (a *access) Provides(x byte) bool {
	switch x {
	case mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish, mochi.OnDisconnect, mochi.OnSessionEstablished:
		return true
	}
	return false
}

func peerCertificate(cl *mochi.Client) *x509.Certificate {
	tc, ok := tlsConn(cl.Net.Conn)
	if !ok {
		return nil
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) == 0 {
		return nil
	}
	return st.PeerCertificates[0] // verified by verifyPeer during the handshake
}

// A handshake's certificate check found a device's certificate, or a
// factory certificate.
type (
	deviceVerdict  struct{}
	factoryVerdict struct{ chain []*x509.Certificate }
)

// verifyPeer checks a client certificate at the TLS handshake: one from
// provisiond's CA is a device's (CONNECT then checks it against the
// inventory); any other must be a factory certificate under a registered
// manufacturer CA. Anything else fails the handshake.
func (b *Broker) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	certs, kind, err := peers.Classify(b.life, raw, b.cfg.ClientCAs, b.cfg.Factory)
	switch {
	case err != nil && kind == peers.Factory:
		b.log.Info("factory certificate refused at handshake", "subject", certs[0].Subject.String(), "err", err)
		return err
	case err != nil:
		return err
	case kind == peers.Device:
		b.verified.Put(raw[0], deviceVerdict{})
	case kind == peers.Factory:
		b.verified.Put(raw[0], factoryVerdict{chain: certs})
	}
	return nil
}

func sourceOf(cl *mochi.Client) netip.AddrPort {
	ap, err := netip.ParseAddrPort(cl.Net.Remote)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (a *access) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	clientID := pk.Connect.ClientIdentifier
	src := sourceOf(cl)
	cert := peerCertificate(cl)
	var verdict any
	if cert != nil {
		verdict = a.b.verified.Take(cert.Raw)
	}
	if f, ok := verdict.(factoryVerdict); ok {
		if !topics.ValidBootstrapID(clientID) {
			a.b.log.Info("mqtt connect refused", "client_id", clientID, "source", src,
				"err", errors.New("with a factory certificate the client ID must be boot-<16-64 of [A-Za-z0-9_-]>"))
			return false
		}
		a.clients.Store(cl, identity{source: src, factory: f.chain})
		return true
	}
	if cert != nil {
		id, serial, err := profile.Identify(cert)
		if err == nil && verdict == nil {
			err = errors.New("certificate not verified at the handshake")
		}
		if err == nil && clientID != id.String() {
			err = fmt.Errorf("client ID %q is not the certificate's device %s", clientID, id)
		}
		if err == nil {
			// Indexed before the inventory is read: see CutDevice.
			a.addSession(id, cl)
			if a.b.cfg.Authorize != nil {
				err = a.b.cfg.Authorize(a.b.life, id, serial)
			}
			if err != nil {
				a.dropSession(id, cl)
			}
		}
		if err != nil {
			a.b.log.Info("mqtt connect refused", "client_id", clientID, "source", src, "err", err)
			return false
		}
		a.clients.Store(cl, identity{device: id, certSerial: serial, source: src})
		return true
	}
	if !topics.ValidBootstrapID(clientID) {
		a.b.log.Info("mqtt connect refused", "client_id", clientID, "source", src,
			"err", errors.New("without a certificate the client ID must be boot-<16-64 of [A-Za-z0-9_-]>"))
		return false
	}
	a.clients.Store(cl, identity{source: src})
	return true
}

func (a *access) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	if v, ok := a.clients.Load(cl); ok && v.(identity).device != uuid.Nil {
		who := v.(identity)
		who.established = true // mochi has listed the client
		a.clients.Store(cl, who)
		a.relist(cl)
		// Retained messages live in memory: make sure a (re)connecting device
		// finds its current config even after a server restart.
		a.b.handler.PushConfig(a.b.life, v.(identity).device)
	}
}

func (a *access) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	if v, ok := a.clients.LoadAndDelete(cl); ok && v.(identity).device != uuid.Nil {
		a.dropSession(v.(identity).device, cl)
		a.ending.Store(cl.Net.Conn, v.(identity).device)
	}
}

func (a *access) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	v, ok := a.clients.Load(cl)
	if !ok {
		return false
	}
	who := v.(identity)
	if who.device == uuid.Nil { // bootstrap client
		if topics.HasWildcard(topic) {
			return false
		}
		if write {
			p := topics.Parse(topic)
			return p.Kind == topics.KindEnroll && p.ClientID == cl.ID
		}
		return topic == topics.Result(cl.ID)
	}
	own := topics.DevicesRoot + "/" + who.device.String() + "/"
	rest, ok := strings.CutPrefix(topic, own)
	if !ok || rest == "" {
		return false
	}
	if write {
		return !topics.HasWildcard(rest) && rest != "config" && rest != "lease" && rest != "certificate"
	}
	return true // any filter inside its own tree
}

func (a *access) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	if pk.FixedHeader.Retain {
		// A retained enrollment request would keep a claim token on the
		// broker: clients never get to retain anything. (Rejecting the packet
		// instead would leave a QoS 1 publisher waiting for an ack forever.)
		pk.FixedHeader.Retain = false
	}
	v, _ := a.clients.Load(cl)
	who, _ := v.(identity)
	// Server-bound messages are handled here. They still go on through mochi
	// (which acknowledges QoS 1 only then; a rejected packet is never
	// acknowledged), but the access rules leave no one else to receive them.
	ctx := a.b.life
	if who.factory != nil {
		ctx = bootstrap.WithFactory(ctx, who.factory)
	}
	a.b.handler.Handle(ctx, pk.TopicName, pk.Payload, who.source, who.certSerial)
	if who.device == uuid.Nil {
		answered(cl.Net.Conn) // a bootstrap session's enrollment: its handshake slot is free
	}
	return pk, nil
}
