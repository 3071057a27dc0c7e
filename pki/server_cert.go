package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/netip"
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

// IssueServerPEM issues a server certificate with a fresh key for another
// service (an external MQTT broker) and returns the chain and the key in PEM.
func (ca *CA) IssueServerPEM(names []string, ips []netip.Addr, lifetime time.Duration) (chainPEM, keyPEM []byte, err error) {
	var netIPs []net.IP
	for _, ip := range ips {
		netIPs = append(netIPs, net.IP(ip.AsSlice()))
	}
	c, err := ca.IssueServer(names, netIPs, lifetime)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, nil, err
	}
	return EncodeCerts(c.Leaf, ca.intermediate), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
