package coap

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	piondtls "github.com/pion/dtls/v3"

	"github.com/provisiond/provisiond/internal/handshake"
)

// gatedListener hands go-coap sessions whose handshake passes the gate.
type gatedListener struct {
	inner interface {
		AcceptWithContext(ctx context.Context) (net.Conn, error)
		Close() error
		Addr() net.Addr
	}
	gate *handshake.Gate
	// bootstrap says whether a session with this client certificate (leaf
	// DER) is a bootstrap session (a factory certificate's), which holds
	// its slot as a certificate-less one does; nil: none is.
	bootstrap func(leaf []byte) bool
}

func (l *gatedListener) AcceptWithContext(ctx context.Context) (net.Conn, error) {
	c, err := l.inner.AcceptWithContext(ctx)
	if err != nil {
		return nil, err
	}
	dc, ok := c.(*piondtls.Conn)
	if !ok {
		return c, nil
	}
	return &gatedConn{Conn: dc, gate: l.gate, bootstrap: l.bootstrap}, nil
}

func (l *gatedListener) Close() error   { return l.inner.Close() }
func (l *gatedListener) Addr() net.Addr { return l.inner.Addr() }

// gatedConn is a DTLS session whose handshake runs inside a gate slot.
// go-coap calls HandshakeContext before it serves the session (and again
// before every read). An enrolled device gives its slot back when the
// handshake ends; a bootstrap session (no client certificate, a bootstrap
// PSK, a factory certificate) holds it until its enrollment is answered
// (package handshake explains why).
type gatedConn struct {
	*piondtls.Conn
	gate      *handshake.Gate
	bootstrap func(leaf []byte) bool

	hsMu   sync.Mutex
	hsDone bool
	hsErr  error
	slot   atomic.Pointer[handshake.Slot]
}

func (c *gatedConn) HandshakeContext(ctx context.Context) error {
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if !c.hsDone {
		c.hsErr = c.handshake(ctx)
		c.hsDone = true
	}
	return c.hsErr
}

func (c *gatedConn) handshake(ctx context.Context) error {
	slot, err := c.gate.Acquire(ctx)
	if err != nil {
		return err
	}
	c.slot.Store(slot)
	if err := c.Conn.HandshakeContext(ctx); err != nil {
		slot.Release()
		return err
	}
	st, ok := c.Conn.ConnectionState()
	if !ok || len(st.PeerCertificates) > 0 && (c.bootstrap == nil || !c.bootstrap(st.PeerCertificates[0])) {
		slot.Release()
		return nil
	}
	slot.Hold()
	return nil
}

// release gives the slot back, if the session took one (Slot.Release
// accepts nil and counts once).
func (c *gatedConn) release() { c.slot.Load().Release() }

func (c *gatedConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// enrolled is called once a bootstrap session's enrollment is answered.
func enrolled(nc net.Conn) {
	if c, ok := nc.(*gatedConn); ok {
		c.release()
	}
}

// Answered tells the handshake gate that the bootstrap on the session of a
// mounted resource is answered (an EST-coaps enrollment, an LwM2M
// bootstrap's end): its slot goes to the next handshake. A bootstrap
// session holds its slot until then, at most --handshake-wait.
func Answered(c interface{ NetConn() net.Conn }) { enrolled(c.NetConn()) }

// dtlsState is what OnNewConn needs from a session, gated or not.
type dtlsState interface {
	ConnectionState() (piondtls.State, bool)
}
