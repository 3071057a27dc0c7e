package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/pki/profile"
)

// An LwM2M bootstrap (OMA LwM2M client-initiated bootstrap) is an
// enrollment in which provisiond writes the device's credentials instead of
// answering its CSR: PrepareLwM2M authenticates the Bootstrap-Request and
// decides, as Enroll does, then makes the credentials; the transport writes
// them; CommitLwM2M records the enrollment before the transport sends
// Bootstrap-Finish. Nothing is recorded for a bootstrap that stops before.

// ErrNoLwM2MProfile is returned when a device's site has no LwM2M bootstrap
// profile: the device cannot be told where its management server is.
var ErrNoLwM2MProfile = errors.New("the device's site has no LwM2M bootstrap profile")

// MinBootstrapPSK and MaxBootstrapPSK bound a bootstrap PSK, in bytes.
const (
	MinBootstrapPSK = 16
	MaxBootstrapPSK = 64
)

// LwM2MRequest is a Bootstrap-Request and how its DTLS session was
// authenticated: exactly one of PSKIdentity, Factory and DeviceID.
type LwM2MRequest struct {
	Serial      string              // the endpoint name's serial
	PSKIdentity string              // the session's bootstrap PSK identity (a serial), proven by the handshake
	Factory     []*x509.Certificate // the session's factory certificate chain, verified at the handshake
	DeviceID    uuid.UUID           // the session's provisiond device certificate, authorized at the handshake
	Source      netip.AddrPort
}

// LwM2MGrant is a bootstrap decided on: what to write and what to record.
type LwM2MGrant struct {
	Device  devices.Device // as decided on; the commit fails if it changed since
	Profile devices.LwM2MProfile
	Auth    string // "lwm2m-psk", "factory-certificate" or "device-certificate" (audit)
	// The credentials for the management server, by the profile's mode:
	// certificate: the certificate (DER) and its key (PKCS#8 DER); psk: the
	// PSK (its identity is the device's endpoint name, the transport's to
	// say); est: none.
	Cert, Key []byte
	PSK       []byte
	ServerCA  []byte // DER of the CA the management server's certificate chains to
	WiFi      WiFi   // the site's network, opened
	// Rekey says the device is provisioned and this bootstrap gives it a new
	// identity: in EST mode its EST-coaps enrollment on the session then
	// sets Request.Rekey.
	Rekey   bool
	leaf    *x509.Certificate
	factory *FactoryIdentity
}

// BootstrapPSK returns the bootstrap PSK of the device whose serial is
// identity (a DTLS handshake's PSK callback). An unknown identity and a
// device without a PSK get ErrUnauthorized: the handshake fails. A revoked
// device's handshake succeeds, so that its Bootstrap-Request is answered
// 4.03 (revoked) rather than left to time out. It takes no throttle: a
// wrong key fails the handshake where the server never learns whether the
// identity was right.
func (s *Service) BootstrapPSK(ctx context.Context, identity string) ([]byte, error) {
	if !devices.ValidSerial(identity) {
		return nil, ErrUnauthorized
	}
	d, err := s.store.DeviceBySerial(ctx, identity)
	switch {
	case errors.Is(err, devices.ErrNotFound):
		return nil, ErrUnauthorized
	case err != nil:
		return nil, err
	case d.BootstrapPSK == "":
		return nil, ErrUnauthorized
	}
	return openPSK(s.cfg.Secrets, d.BootstrapPSK)
}

// PrepareLwM2M authenticates a Bootstrap-Request and decides on it by the
// claim, site and throttle rules of Enroll: the session's identity must be
// the endpoint's serial; a revoked device is refused; a device not claimed
// is told to come back; a provisioned one bootstraps again only within the
// retry window (a bootstrap that did not finish) or when an operator asked
// for it (Fleet.Rebootstrap). It then makes the credentials the site's
// profile asks for; nothing is stored until CommitLwM2M.
func (s *Service) PrepareLwM2M(ctx context.Context, req LwM2MRequest) (LwM2MGrant, error) {
	release, err := s.admitOne()
	if err != nil {
		return LwM2MGrant{}, err
	}
	defer release()
	now := s.clock.Now()
	if !devices.ValidSerial(req.Serial) {
		return LwM2MGrant{}, fmt.Errorf("%w: endpoint name: not a device serial", ErrInvalid)
	}
	srcKey, th, err := s.checkThrottles(ctx, req.Serial, req.Source, now)
	if err != nil {
		return LwM2MGrant{}, err
	}
	refuse := func(reason string) (LwM2MGrant, error) {
		s.failed(ctx, req.Serial, srcKey, now)
		s.log.Info("lwm2m bootstrap refused", "serial", req.Serial, "source", req.Source, "reason", reason)
		return LwM2MGrant{}, fmt.Errorf("%w: %s", ErrUnauthorized, reason)
	}
	var g LwM2MGrant
	var d devices.Device
	switch {
	case req.PSKIdentity != "":
		if req.PSKIdentity != req.Serial {
			return refuse(fmt.Sprintf("the session's PSK identity is %s's, not the endpoint's", req.PSKIdentity))
		}
		g.Auth = "lwm2m-psk"
		if d, err = s.store.DeviceBySerial(ctx, req.Serial); errors.Is(err, devices.ErrNotFound) {
			return refuse("the device is gone") // since the handshake
		} else if err != nil {
			return LwM2MGrant{}, fmt.Errorf("bootstrap %s: %w", req.Serial, err)
		}
	case len(req.Factory) > 0:
		fid, err := s.IdentifyFactory(ctx, req.Factory)
		if err != nil {
			return LwM2MGrant{}, err
		}
		if fid.Serial != req.Serial {
			return refuse(fmt.Sprintf("the factory certificate names serial %s, not the endpoint's", fid.Serial))
		}
		er := Request{Serial: req.Serial, Source: req.Source, Transport: "lwm2m"}
		if d, err = s.authenticateFactory(ctx, er, fid, now, srcKey, th); err != nil {
			return LwM2MGrant{}, err
		}
		g.Auth, g.factory = "factory-certificate", &fid
	case req.DeviceID != uuid.Nil:
		d, err = s.store.Device(ctx, req.DeviceID)
		if errors.Is(err, devices.ErrNotFound) {
			return LwM2MGrant{}, ErrUnknownDevice
		} else if err != nil {
			return LwM2MGrant{}, fmt.Errorf("bootstrap %s: %w", req.Serial, err)
		}
		if d.Serial != req.Serial {
			return refuse(fmt.Sprintf("the device certificate is %s's, not the endpoint's", d.Serial))
		}
		g.Auth = "device-certificate"
	default:
		return refuse("the session has no bootstrap credential (a bootstrap PSK or a certificate)")
	}
	s.bySerial.succeed(ctx, req.Serial, th.serial)
	if srcKey != "" {
		s.bySource.succeed(ctx, srcKey, th.source)
	}
	switch d.State {
	case devices.StateRevoked:
		return LwM2MGrant{}, ErrRevoked
	case devices.StateManufactured:
		return LwM2MGrant{}, &RetryError{Err: ErrNotClaimed, After: s.cfg.NotClaimedRetry}
	case devices.StateProvisioned, devices.StateActive:
		if !d.Rebootstrap && now.Sub(d.ProvisionedAt) > s.cfg.RetryWindow {
			return LwM2MGrant{}, fmt.Errorf("%w: bootstrapped at %s; an operator can let it bootstrap again (provctl device rebootstrap)",
				ErrAlreadyProvisioned, d.ProvisionedAt.Format("2006-01-02T15:04:05Z"))
		}
	case devices.StateClaimed:
	default:
		return LwM2MGrant{}, fmt.Errorf("bootstrap %s: unknown state %q", d.Serial, d.State)
	}
	if d.Site == "" {
		return LwM2MGrant{}, &RetryError{Err: ErrNotClaimed, After: s.cfg.NotClaimedRetry}
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return LwM2MGrant{}, fmt.Errorf("bootstrap %s: %w", d.Serial, err)
	}
	if site.LwM2M == nil {
		return LwM2MGrant{}, fmt.Errorf("%w: site %q", ErrNoLwM2MProfile, site.Name)
	}
	// A device of a site with per-device PSKs gets its passphrase now, for
	// the WLAN object; it is stored with the bootstrap (CommitLwM2M), or,
	// in EST mode, where the EST-coaps enrollment that follows commits, at
	// once: that enrollment then keeps it.
	if psk, err := s.newWiFiPSK(site, d); err != nil {
		return LwM2MGrant{}, fmt.Errorf("bootstrap %s: %w", d.Serial, err)
	} else if psk != "" && site.LwM2M.SecurityMode == devices.LwM2MEST && site.LwM2M.WiFi {
		if d, err = s.store.UpdateDevice(ctx, d.ID, func(x *devices.Device) (*devices.AuditEvent, error) {
			if x.Rev != d.Rev {
				return nil, fmt.Errorf("bootstrap %s: %w", d.Serial, devices.ErrConflict)
			}
			x.WiFiPSK = psk
			return nil, nil
		}); err != nil {
			return LwM2MGrant{}, err
		}
	} else if psk != "" {
		d.WiFiPSK = psk
	}
	cfg, err := s.render(ctx, site, d)
	if err != nil {
		return LwM2MGrant{}, err
	}
	g.Device, g.Profile, g.WiFi, g.ServerCA = d, *site.LwM2M, cfg.WiFi, s.signer.Root().Raw
	g.Rekey = d.State == devices.StateProvisioned || d.State == devices.StateActive
	switch g.Profile.SecurityMode {
	case devices.LwM2MCertificate:
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return LwM2MGrant{}, err
		}
		csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: d.Serial}}, key)
		if err != nil {
			return LwM2MGrant{}, err
		}
		csr, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			return LwM2MGrant{}, err
		}
		leaf, err := s.signer.IssueDevice(csr, profile.Device{ID: d.ID, Serial: d.Serial, Model: d.Model, Site: d.Site})
		if err != nil {
			return LwM2MGrant{}, fmt.Errorf("bootstrap %s: %w", d.Serial, err)
		}
		if g.Key, err = x509.MarshalPKCS8PrivateKey(key); err != nil {
			return LwM2MGrant{}, err
		}
		g.Cert, g.leaf = leaf.Raw, leaf
	case devices.LwM2MPSK:
		g.PSK = make([]byte, 32)
		if _, err := rand.Read(g.PSK); err != nil {
			return LwM2MGrant{}, err
		}
	case devices.LwM2MEST:
	default:
		return LwM2MGrant{}, fmt.Errorf("bootstrap %s: security mode %q", d.Serial, g.Profile.SecurityMode)
	}
	return g, nil
}

// CommitLwM2M records a bootstrap whose Writes the client accepted, before
// Bootstrap-Finish: the device provisioned with its new credentials (a
// certificate it had is superseded), its lease, and a device.enroll audit
// event, as Enroll records them. In EST mode nothing is recorded: the
// device enrolls with EST-coaps next. It fails with ErrConflict when the
// device changed since PrepareLwM2M (revoked meanwhile, another bootstrap).
func (s *Service) CommitLwM2M(ctx context.Context, g LwM2MGrant, source netip.AddrPort) (Result, error) {
	if g.Profile.SecurityMode == devices.LwM2MEST {
		return Result{DeviceID: g.Device.ID}, nil
	}
	now := s.clock.Now().UTC()
	d := g.Device
	detail := map[string]string{"device_id": d.ID.String(), "transport": "lwm2m", "auth": g.Auth, "site": d.Site,
		"lwm2m_security": string(g.Profile.SecurityMode)}
	if g.leaf != nil {
		detail["cert_serial"] = fmt.Sprintf("%x", g.leaf.SerialNumber)
	}
	if g.factory != nil {
		detail["factory_ca"] = g.factory.CA.ID
	}
	var sealedPSK string
	if g.PSK != nil {
		var err error
		if sealedPSK, err = seal(s.cfg.Secrets, hex.EncodeToString(g.PSK)); err != nil {
			return Result{}, err
		}
	}
	superseded := d.CertSerial != ""
	stored, err := s.store.Provision(ctx, devices.Provisioning{
		DeviceID: d.ID, Rev: d.Rev, Now: now, Supersede: true,
		Apply: func(x *devices.Device) {
			x.State = devices.StateProvisioned
			x.CertSerial, x.CertDER, x.CertNotAfter, x.PublicKeyHash = "", nil, time.Time{}, nil
			if g.leaf != nil {
				h := sha256.Sum256(g.leaf.RawSubjectPublicKeyInfo)
				x.CertSerial, x.CertDER, x.CertNotAfter, x.PublicKeyHash = fmt.Sprintf("%x", g.leaf.SerialNumber), g.leaf.Raw, g.leaf.NotAfter, h[:]
			}
			x.LwM2MPSK = sealedPSK
			if d.WiFiPSK != "" {
				x.WiFiPSK = d.WiFiPSK // given at PrepareLwM2M (or kept)
			}
			x.Rebootstrap = false
			x.ConfigVersion++
			x.ProvisionedAt = now
			if g.factory != nil {
				x.FactoryCA = g.factory.CA.ID
			}
		},
		Audit: devices.AuditEvent{Actor: "device:" + d.Serial, Action: "device.enroll", Target: d.Serial,
			Source: source.String(), Detail: detail},
	})
	switch {
	case errors.Is(err, devices.ErrPoolExhausted):
		s.log.Warn("lwm2m bootstrap refused", "serial", d.Serial, "site", d.Site, "reason", "pool exhausted")
		return Result{}, &RetryError{Err: fmt.Errorf("%w: site %q", ErrPoolExhausted, d.Site), After: s.cfg.PoolRetry}
	case err != nil:
		return Result{}, fmt.Errorf("bootstrap %s: %w", d.Serial, err)
	}
	if superseded && s.onSuperseded != nil {
		s.onSuperseded()
	}
	s.log.Info("device bootstrapped", "serial", d.Serial, "device_id", d.ID, "site", d.Site,
		"address", stored.Lease.Addr, "transport", "lwm2m", "security", g.Profile.SecurityMode)
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return Result{}, err
	}
	cfg, err := s.render(ctx, site, stored)
	if err != nil {
		return Result{}, err
	}
	s.notify(stored.ID, cfg)
	return Result{DeviceID: stored.ID, Config: cfg}, nil
}

// ParseBootstrapPSK reads a bootstrap PSK as a manifest carries it: hex,
// MinBootstrapPSK to MaxBootstrapPSK bytes.
func ParseBootstrapPSK(s string) ([]byte, error) {
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil || len(b) < MinBootstrapPSK || len(b) > MaxBootstrapPSK {
		return nil, fmt.Errorf("lwm2m_psk: want %d-%d bytes in hex", MinBootstrapPSK, MaxBootstrapPSK)
	}
	return b, nil
}

// openPSK opens a sealed PSK (kept as hex).
func openPSK(sec Secrets, sealed string) ([]byte, error) {
	h, err := open(sec, sealed)
	if err != nil {
		return nil, err
	}
	return hex.DecodeString(h)
}
