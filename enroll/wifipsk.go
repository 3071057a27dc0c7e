package enroll

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	"github.com/provisiond/provisiond/devices"
)

// Per-device Wi-Fi PSKs (identity PSK): a site with PerDevicePSK gives each
// device a passphrase of its own at its enrollment. The device gets it in
// its config; the site's RADIUS server gets it by the device's MAC
// (WiFiKey), so that the access point runs the WPA2 handshake with that
// device's key, and a revoked device's key is served to nobody.

// newWiFiPSK returns a fresh per-device passphrase, sealed, for a device
// of a site with per-device PSKs that has none yet; "" otherwise: a
// device keeps its passphrase through renewals and re-keys, and loses it
// when it is revoked (a re-opened device gets a new one).
func (s *Service) newWiFiPSK(site devices.Site, d devices.Device) (string, error) {
	if !site.PerDevicePSK || d.WiFiPSK != "" {
		return "", nil
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	// 26 characters of [a-z2-7]: 128 bits, within WPA2's 8-63 printable
	// characters, and typeable when someone must.
	pass := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
	return seal(s.cfg.Secrets, pass)
}

// WiFiKey is what a site's RADIUS server is told about a device that
// associates by its MAC (MAC authorisation of a PSK site).
type WiFiKey struct {
	Device     devices.Device
	SSID       string
	Passphrase string // the device's own passphrase, or the site's when it has none
	PerDevice  bool   // Passphrase is the device's own
}

// ErrNoPSK is returned for a device whose site joins with EAP-TLS: it has
// no passphrase to serve.
var ErrNoPSK = errors.New("the device joins its Wi-Fi with EAP-TLS, not a passphrase")

// WiFiKey finds the enrolled device that reported mac and returns the
// passphrase its config gives it, for the RADIUS server's MAC
// authorisation. Unknown MACs, devices not enrolled and a MAC two live
// devices reported get ErrUnknownDevice; revoked devices ErrRevoked;
// devices of enterprise sites ErrNoPSK; a malformed MAC ErrInvalid.
func (s *Service) WiFiKey(ctx context.Context, mac string) (WiFiKey, error) {
	if _, ok := devices.NormalizeMAC(mac); !ok {
		return WiFiKey{}, fmt.Errorf("%w: mac: %q is not a MAC address", ErrInvalid, mac)
	}
	d, site, err := s.networkDevice(ctx, DHCPClient{MAC: mac})
	if err != nil {
		return WiFiKey{Device: d}, err
	}
	cfg, err := s.render(ctx, site, d)
	if err != nil {
		return WiFiKey{Device: d}, err
	}
	if cfg.WiFi.EAP != nil || cfg.WiFi.Passphrase == "" {
		return WiFiKey{Device: d}, fmt.Errorf("%w: device %s of site %s", ErrNoPSK, d.Serial, site.Name)
	}
	return WiFiKey{Device: d, SSID: cfg.WiFi.SSID, Passphrase: cfg.WiFi.Passphrase,
		PerDevice: site.PerDevicePSK && d.WiFiPSK != "" && (d.Override == nil || d.Override.Passphrase == "")}, nil
}
