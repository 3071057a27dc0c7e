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
	return &gatedConn{Conn: dc, gate: l.gate}, nil
}

func (l *gatedListener) Close() error   { return l.inner.Close() }
func (l *gatedListener) Addr() net.Addr { return l.inner.Addr() }

// gatedConn is a DTLS session whose handshake runs inside a gate slot.
// go-coap calls HandshakeContext before it serves the session (and again
// before every read). An enrolled device gives its slot back when the
// handshake ends; a bootstrap session holds it until its enrollment is
// answered (package handshake explains why).
type gatedConn struct {
	*piondtls.Conn
	gate *handshake.Gate

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
	if st, ok := c.Conn.ConnectionState(); !ok || len(st.PeerCertificates) > 0 {
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

// dtlsState is what OnNewConn needs from a session, gated or not.
type dtlsState interface {
	ConnectionState() (piondtls.State, bool)
}
