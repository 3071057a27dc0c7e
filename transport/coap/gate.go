package coap

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	piondtls "github.com/pion/dtls/v3"
)

// handshakeGate bounds the DTLS handshakes the server works on at once.
//
// A boot storm opens thousands of handshakes together. Run all at once on a
// few cores, each one takes so long that devices retransmit their flights and
// give up before it completes: the server spends its CPU on handshakes that
// are thrown away and goodput collapses. DTLS has no "try later" answer, so
// the gate does what a TCP listen backlog does: a new session waits, costing
// no CPU, for one of the slots (its ClientHello retransmissions are buffered
// meanwhile); one that waits longer than maxWait is dropped silently and the
// device retries later, by its own backoff. Admission control of the
// enrollments themselves (5.03 with Max-Age) happens after the handshake.
type handshakeGate struct {
	slots   chan struct{}
	maxWait time.Duration // a new session waits this long for a slot
	hold    time.Duration // a bootstrap session keeps its slot at most this long after the handshake

	waiting atomic.Int64 // sessions waiting for a slot now
	dropped atomic.Int64 // sessions dropped after waiting maxWait
}

func newHandshakeGate(n int, maxWait, hold time.Duration) *handshakeGate {
	return &handshakeGate{slots: make(chan struct{}, n), maxWait: maxWait, hold: hold}
}

// enter waits for a slot, at most maxWait and never past ctx.
func (g *handshakeGate) enter(ctx context.Context) error {
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	t := time.NewTimer(g.maxWait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-t.C:
		g.dropped.Add(1)
		return errHandshakeBusy
	case <-ctx.Done():
		g.dropped.Add(1)
		return ctx.Err()
	}
}

func (g *handshakeGate) leave() { <-g.slots }

// gatedListener hands go-coap sessions whose handshake passes the gate.
type gatedListener struct {
	inner interface {
		AcceptWithContext(ctx context.Context) (net.Conn, error)
		Close() error
		Addr() net.Addr
	}
	gate *handshakeGate
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
// go-coap calls HandshakeContext before it serves the session.
//
// An enrolled device (mutual DTLS) gives its slot back when the handshake
// ends. A bootstrap session keeps it until its enrollment is answered, the
// session closes or hold passes, whichever comes first: otherwise a storm of
// fresh sessions would pass the gate faster than enrollments complete, and
// the enrollment admission control would refuse, with 5.03, sessions whose
// handshake the server has already paid for.
type gatedConn struct {
	*piondtls.Conn
	gate *handshakeGate

	hsMu   sync.Mutex // go-coap calls HandshakeContext again before every read
	hsDone bool
	hsErr  error

	mu       sync.Mutex
	holding  bool
	released bool
	timer    *time.Timer
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
	if err := c.gate.enter(ctx); err != nil {
		return err
	}
	c.mu.Lock()
	c.holding = true
	c.mu.Unlock()
	if err := c.Conn.HandshakeContext(ctx); err != nil {
		c.release()
		return err
	}
	if st, ok := c.Conn.ConnectionState(); !ok || len(st.PeerCertificates) > 0 {
		c.release()
		return nil
	}
	c.mu.Lock()
	if !c.released {
		c.timer = time.AfterFunc(c.gate.hold, c.release)
	}
	c.mu.Unlock()
	return nil
}

// release gives the slot back, once, if the session holds one.
func (c *gatedConn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.holding || c.released {
		return
	}
	c.released = true
	if c.timer != nil {
		c.timer.Stop()
	}
	c.gate.leave()
}

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
