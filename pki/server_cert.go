package pki

import (
	"crypto/tls"
	"net"
	"sync"
	"time"
)

// ServerCertificate is the service's own certificate for its TLS and DTLS
// listeners. Get hands out the current one and reissues it (a new key too)
// once two thirds of its lifetime have passed, so a long-running server
// never presents an expired certificate.
type ServerCertificate struct {
	ca       *CA
	names    []string
	ips      []net.IP
	lifetime time.Duration
	// Now tells the time; tests replace it.
	Now func() time.Time

	mu  sync.Mutex
	cur *tls.Certificate
}

// NewServerCertificate issues the first certificate for names and ips.
func (ca *CA) NewServerCertificate(names []string, ips []net.IP, lifetime time.Duration) (*ServerCertificate, error) {
	s := &ServerCertificate{ca: ca, names: names, ips: ips, lifetime: lifetime, Now: time.Now}
	c, err := ca.IssueServer(names, ips, lifetime)
	if err != nil {
		return nil, err
	}
	s.cur = &c
	return s, nil
}

// Get returns the certificate to present, reissuing it when it is due. If
// reissuing fails, the current certificate is returned with the error, so
// callers can log and go on while it is still valid.
func (s *ServerCertificate) Get() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	leaf := s.cur.Leaf
	if s.Now().Before(leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)) {
		return s.cur, nil
	}
	c, err := s.ca.IssueServer(s.names, s.ips, s.lifetime)
	if err != nil {
		return s.cur, err
	}
	s.cur = &c
	return s.cur, nil
}
