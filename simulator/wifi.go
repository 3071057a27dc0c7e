package simulator

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/provisiond/provisiond/transport/wire"
)

// WiFiJoin is what a device configures its Wi-Fi supplicant with, from
// the config provisiond gave it.
type WiFiJoin struct {
	SSID, Security string
	Passphrase     string // wpa2-psk, wpa3-sae
	// The enterprise modes: EAP-TLS with the device's certificate, an
	// outer identity, and the CA (and name) the RADIUS server's
	// certificate must have.
	EAPIdentity string
	ServerName  string
	CA          *x509.Certificate
	Certificate *tls.Certificate
}

// WiFiJoin reads the Wi-Fi settings of a config as firmware does and
// refuses what it could not join with: an enterprise network without EAP-TLS
// settings, a RADIUS CA that is not the root the device was flashed with,
// an identity that is not its own, no certificate of its own; a PSK network
// without a usable passphrase.
func (d *Device) WiFiJoin(w wire.WiFi) (WiFiJoin, error) {
	j := WiFiJoin{SSID: w.SSID, Security: w.Security}
	switch w.Security {
	case "wpa2-psk", "wpa3-sae":
		if len(w.Passphrase) < 8 || len(w.Passphrase) > 63 || w.EAP != nil {
			return j, fmt.Errorf("wifi %s: a passphrase of 8-63 characters and no EAP settings expected", w.Security)
		}
		j.Passphrase = w.Passphrase
		return j, nil
	case "wpa2-enterprise", "wpa3-enterprise":
	default:
		return j, fmt.Errorf("wifi: security %q is not one this device supports", w.Security)
	}
	if w.EAP == nil || w.EAP.Method != "tls" || w.Passphrase != "" {
		return j, fmt.Errorf("wifi %s: EAP-TLS settings and no passphrase expected", w.Security)
	}
	if d.Enrollment == nil || w.EAP.Identity != d.Enrollment.DeviceID {
		return j, fmt.Errorf("wifi: the EAP identity %q is not this device's", w.EAP.Identity)
	}
	ca, err := x509.ParseCertificate(w.EAP.CA)
	if err != nil {
		return j, fmt.Errorf("wifi: the RADIUS server's CA: %w", err)
	}
	if b, _ := pem.Decode([]byte(d.Bundle.RootCA)); b == nil || !bytes.Equal(b.Bytes, ca.Raw) {
		return j, errors.New("wifi: the RADIUS server's CA is not the root this device was flashed with")
	}
	cert, err := d.TLSCertificate()
	if err != nil {
		return j, fmt.Errorf("wifi: EAP-TLS needs the device's certificate: %w", err)
	}
	j.EAPIdentity, j.ServerName, j.CA, j.Certificate = w.EAP.Identity, w.EAP.ServerName, ca, cert
	return j, nil
}
