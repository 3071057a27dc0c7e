package mqtt

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/provisiond/provisiond/internal/handshake"
)

// tlsListener is mochi's TCP listener with the TLS handshake done first,
// inside a handshake gate (package handshake): in a boot storm, sessions
// wait for a slot instead of all handshaking at once, and a bootstrap
// session keeps its slot until its enrollment is answered.
type tlsListener struct {
	id, addr string
	cfg      *tls.Config
	gate     *handshake.Gate
	timeout  time.Duration  // for one handshake
	ended    func(net.Conn) // called when mochi is done with a session
	failed   chan<- error   // told when the listener stops on its own

	mu  sync.Mutex
	ln  net.Listener
	end atomic.Bool
	log *slog.Logger
}

var _ listeners.Listener = (*tlsListener)(nil)

func (l *tlsListener) ID() string       { return l.id }
func (l *tlsListener) Protocol() string { return "tcp" }

func (l *tlsListener) Address() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.addr
}

func (l *tlsListener) Init(log *slog.Logger) error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.ln, l.log = ln, log
	l.mu.Unlock()
	return nil
}

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if l.end.Load() {
			if conn != nil {
				_ = conn.Close()
			}
			return
		}
		if err != nil {
			// Not closed by us: the listener failed, and devices can no
			// longer connect. Tell the server, which stops.
			l.log.Error("mqtts listener stopped", "err", err)
			select {
			case l.failed <- fmt.Errorf("mqtts listener %s: %w", l.addr, err):
			default:
			}
			return
		}
		go func() {
			c, err := l.handshake(conn)
			if err != nil {
				_ = conn.Close()
				l.log.Debug("mqtts handshake", "remote", conn.RemoteAddr().String(), "err", err)
				return
			}
			if err := establish(l.id, c); err != nil {
				l.log.Debug("mqtts session", "remote", conn.RemoteAddr().String(), "err", err)
			}
			if l.ended != nil {
				l.ended(c)
			}
		}()
	}
}

// handshake runs the TLS handshake inside a gate slot. mochi reads the
// client certificate from the *tls.Conn, so an enrolled device's session is
// handed over as that; a bootstrap session is wrapped to hold its slot.
func (l *tlsListener) handshake(conn net.Conn) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	slot, err := l.gate.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	tc := tls.Server(conn, l.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		slot.Release()
		return nil, err
	}
	if len(tc.ConnectionState().PeerCertificates) > 0 {
		slot.Release()
		return tc, nil
	}
	slot.Hold()
	return &bootstrapConn{Conn: tc, slot: slot}, nil
}

func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	if l.end.CompareAndSwap(false, true) {
		closeClients(l.id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

// bootstrapConn is a session without a client certificate, holding a gate
// slot until its enrollment is answered or it closes.
type bootstrapConn struct {
	*tls.Conn
	slot *handshake.Slot
}

func (c *bootstrapConn) Close() error {
	c.slot.Release()
	return c.Conn.Close()
}

// tlsConn returns the TLS connection under a session's connection.
func tlsConn(c net.Conn) (*tls.Conn, bool) {
	switch c := c.(type) {
	case *tls.Conn:
		return c, true
	case *bootstrapConn:
		return c.Conn, true
	}
	return nil, false
}

// answered gives a bootstrap session's gate slot back.
func answered(c net.Conn) {
	if b, ok := c.(*bootstrapConn); ok {
		b.slot.Release()
	}
}
