package coap

import (
	"errors"
	"fmt"

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
	if len(raw) == 0 {
		return nil // no client certificate: a bootstrap session
	}
	certs, err := peers.Parse(raw)
	if err != nil {
		return fmt.Errorf("client certificate: %w", err)
	}
	if peers.Verify(certs, s.cfg.ClientCAs) != nil {
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
		return nil
	}
	if s.cfg.Factory == nil {
		return errors.New("client certificate is not from provisiond's CA")
	}
	if err := s.cfg.Factory(s.life, certs); err != nil {
		s.log.Info("factory certificate refused at handshake", "subject", certs[0].Subject.String(), "err", err)
		return err
	}
	s.verified.Put(raw[0], factoryPeer{chain: certs})
	return nil
}
