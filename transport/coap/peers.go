package coap

import (
	"crypto/x509"

	"github.com/provisiond/provisiond/internal/peers"
	"github.com/provisiond/provisiond/pki/profile"
)

// verifyPeer checks a client certificate at the DTLS handshake, after pion
// checked the CertificateVerify signature: one that chains to provisiond's
// CA is a device's, which must be its current certificate and the device not
// revoked (Authorize); any other must be a factory certificate under a
// registered manufacturer CA (Factory). Anything else fails the handshake.
func (s *Server) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	certs, kind, err := peers.Classify(s.life, raw, s.cfg.ClientCAs, s.cfg.Factory)
	switch {
	case err != nil && kind == peers.Factory:
		s.log.Info("factory certificate refused at handshake", "subject", certs[0].Subject.String(), "err", err)
		return err
	case err != nil:
		return err
	case kind == peers.Device:
		id, serial, err := profile.Identify(certs[0])
		if err != nil {
			return err
		}
		if s.cfg.Authorize != nil {
			if err := s.cfg.Authorize(s.life, id, serial); err != nil {
				s.log.Info("device certificate refused at handshake", "device_id", id, "err", err)
				return err
			}
		}
		s.verified.Put(raw[0], peer{id: id, certSerial: serial, leaf: certs[0]})
	case kind == peers.Factory:
		s.verified.Put(raw[0], factoryPeer{chain: certs})
	}
	return nil
}
