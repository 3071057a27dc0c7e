package server

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"sync"

	"github.com/provisiond/provisiond/internal/peers"
)

// The HTTPS listener takes any client certificate at the handshake (which
// proves the client holds its key): a device's from provisiond's CA, a
// factory certificate from a manufacturer's, or a replica's. verifyClients
// verifies it against provisiond's CA once per connection and, when it
// chains there, hands the handlers the verified chain (tls.ConnectionState
// .VerifiedChains) as tls.VerifyClientCertIfGiven would have; any other
// certificate reaches them unverified (PeerCertificates), for EST to check
// against the manufacturer CAs.

type peerCheckKey struct{}

type peerCheck struct {
	once   sync.Once
	chains [][]*x509.Certificate
}

// withPeerCheck gives each connection its verification (http.Server.ConnContext).
func withPeerCheck(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, peerCheckKey{}, &peerCheck{})
}

func verifyClients(next http.Handler, roots *x509.CertPool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		pc, _ := r.Context().Value(peerCheckKey{}).(*peerCheck)
		if pc == nil {
			pc = &peerCheck{}
		}
		pc.once.Do(func() { pc.chains = peers.Verify(r.TLS.PeerCertificates, roots) })
		st := *r.TLS
		st.VerifiedChains = pc.chains
		r2 := *r
		r2.TLS = &st
		next.ServeHTTP(w, &r2)
	})
}
