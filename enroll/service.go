package enroll

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/provisiond/provisiond/pki/profile"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// Store is the part of the inventory that enrollment needs.
type Store interface {
	DeviceBySerial(ctx context.Context, serial string) (devices.Device, error)
	Device(ctx context.Context, id uuid.UUID) (devices.Device, error)
	Site(ctx context.Context, name string) (devices.Site, error)
	Provision(ctx context.Context, p devices.Provisioning) (devices.Device, error)
	RenewLease(ctx context.Context, id uuid.UUID, now time.Time, ev devices.AuditEvent) (devices.Device, error)
	UpdateDevice(ctx context.Context, id uuid.UUID, fn func(d *devices.Device) (*devices.AuditEvent, error)) (devices.Device, error)
}

// Signer issues device certificates.
type Signer interface {
	IssueDevice(csr *x509.CertificateRequest, id profile.Device) (*x509.Certificate, error)
	Intermediate() *x509.Certificate
	Root() *x509.Certificate
}

// Clock tells the time; tests replace it.
type Clock interface{ Now() time.Time }

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config tunes enrollment policy. Zero values take DefaultConfig's.
type Config struct {
	RetryWindow     time.Duration // same serial + same key within this gets the same answer; default 10m
	NotClaimedRetry time.Duration // Max-Age for an unclaimed device; default 5m
	PoolRetry       time.Duration // Max-Age when the pool is exhausted; default 10m
	MaxFailures     int           // failed attempts per serial or source before throttling; default 5
	FailureWindow   time.Duration // failures older than this are forgotten; default 10m
	ThrottleBase    time.Duration // first block; doubles per further failure; default 30s
	ThrottleMax     time.Duration // longest block; default 1h
	AllowP384       bool          // certify ECDSA P-384 keys too
	AllowEd25519    bool          // certify Ed25519 keys too
	MaxCSRBytes     int           // default 2048
	MaxFieldBytes   int           // model, firmware_version; default 64
	// MaxInFlight bounds enrollments being processed at once; past it requests
	// are refused at once with ErrOverloaded and a retry hint instead of
	// queueing until devices time out. Default 256; negative: no bound.
	MaxInFlight   int
	OverloadRetry time.Duration // base retry hint when overloaded (jittered up to 2x); default 2s
	// LBAddrs are the addresses of load balancers in front of the service:
	// every device behind one arrives from its address, so requests from
	// them are not throttled per source (the per-serial throttle still is).
	LBAddrs []netip.Prefix
	// Secrets seals Wi-Fi passphrases before they are stored and opens them
	// to render a device's config; nil keeps them in clear.
	Secrets Secrets
}

// DefaultConfig is the enrollment policy a zero Config stands for: the one
// place its defaults are written.
func DefaultConfig() Config {
	return Config{
		RetryWindow:     10 * time.Minute,
		NotClaimedRetry: 5 * time.Minute,
		PoolRetry:       10 * time.Minute,
		MaxFailures:     5,
		FailureWindow:   10 * time.Minute,
		ThrottleBase:    30 * time.Second,
		ThrottleMax:     time.Hour,
		MaxCSRBytes:     2048,
		MaxFieldBytes:   64,
		MaxInFlight:     256,
		OverloadRetry:   2 * time.Second,
	}
}

// setDefaults fills the zero fields from DefaultConfig.
func (c *Config) setDefaults() {
	d := DefaultConfig()
	set := func(v, def *time.Duration) {
		if *v == 0 {
			*v = *def
		}
	}
	set(&c.RetryWindow, &d.RetryWindow)
	set(&c.NotClaimedRetry, &d.NotClaimedRetry)
	set(&c.PoolRetry, &d.PoolRetry)
	set(&c.FailureWindow, &d.FailureWindow)
	set(&c.ThrottleBase, &d.ThrottleBase)
	set(&c.ThrottleMax, &d.ThrottleMax)
	set(&c.OverloadRetry, &d.OverloadRetry)
	for _, p := range []struct{ v, def *int }{{&c.MaxFailures, &d.MaxFailures}, {&c.MaxCSRBytes, &d.MaxCSRBytes},
		{&c.MaxFieldBytes, &d.MaxFieldBytes}, {&c.MaxInFlight, &d.MaxInFlight}} {
		if *p.v == 0 {
			*p.v = *p.def
		}
	}
}

// Validate checks the policy; messages name the setting as provisiond's
// flags and config file do.
func (c Config) Validate() error {
	pos := []struct {
		name string
		v    time.Duration
	}{{"retry-window", c.RetryWindow}, {"not-claimed-retry", c.NotClaimedRetry}, {"pool-retry", c.PoolRetry},
		{"failure-window", c.FailureWindow}, {"throttle-base", c.ThrottleBase}, {"throttle-max", c.ThrottleMax}, {"overload-retry", c.OverloadRetry}}
	for _, p := range pos {
		if p.v < 0 {
			return fmt.Errorf("%s: %s is negative", p.name, p.v)
		}
	}
	switch {
	case c.ThrottleMax != 0 && c.ThrottleBase > c.ThrottleMax:
		return fmt.Errorf("throttle-base: %s is longer than throttle-max %s", c.ThrottleBase, c.ThrottleMax)
	case c.MaxFailures < 0:
		return errors.New("max-failures: must be at least 1")
	case c.MaxCSRBytes < 0 || (c.MaxCSRBytes > 0 && c.MaxCSRBytes < 256):
		return fmt.Errorf("max-csr-bytes: %d is too small for a CSR (at least 256)", c.MaxCSRBytes)
	case c.MaxFieldBytes < 0:
		return errors.New("max-field-bytes: must be positive")
	}
	return nil
}

// Service runs enrollment, whatever the transport.
type Service struct {
	cfg          Config
	store        Store
	signer       Signer
	clock        Clock
	log          *slog.Logger
	bySerial     *throttle
	bySource     *throttle
	notifier     Notifier
	onSuperseded func()
	admit        chan struct{} // one slot per enrollment in progress; nil: unbounded
	firmware     FirmwareSource
	factory      factoryPool
}

// Ports are what a Service is built on: the inventory and the signer, and
// what it tells of its changes.
type Ports struct {
	Store  Store
	Signer Signer
	Clock  Clock // nil: the system clock
	// Firmware, when set, puts each device's firmware target in its config
	// and the manifest key in every enrollment answer.
	Firmware FirmwareSource
	// Notify hears every device config that changed (nil: nobody).
	Notify Notifier
	// Superseded runs after a renewal superseded a certificate (the CRL
	// must list it); nil: nothing.
	Superseded func()
	// Throttles keeps the failure counts where every replica sees them;
	// nil: in this process (a single node).
	Throttles ThrottleStore
}

// New returns a Service.
func New(cfg Config, p Ports, log *slog.Logger) *Service {
	cfg.setDefaults()
	clock := p.Clock
	if clock == nil {
		clock = systemClock{}
	}
	return &Service{
		cfg: cfg, store: p.Store, signer: p.Signer, clock: clock, log: log,
		notifier: p.Notify, onSuperseded: p.Superseded, firmware: p.Firmware,
		bySerial: newThrottle("enroll-serial", cfg.MaxFailures, cfg.FailureWindow, cfg.ThrottleBase, cfg.ThrottleMax, p.Throttles, log),
		// A source (a NAT, a factory line) may front many devices: allow it more.
		bySource: newThrottle("enroll-source", cfg.MaxFailures*4, cfg.FailureWindow, cfg.ThrottleBase, cfg.ThrottleMax, p.Throttles, log),
		admit:    admission(cfg.MaxInFlight),
	}
}

func admission(n int) chan struct{} {
	if n < 0 {
		return nil
	}
	return make(chan struct{}, n)
}

// overloaded is the refusal when every slot is taken: a retry hint with
// jitter, so that a refused boot storm does not come back all at once.
func (s *Service) overloaded() error {
	jitter := time.Duration(rand.Int64N(int64(s.cfg.OverloadRetry)))
	return &RetryError{Err: ErrOverloaded, After: s.cfg.OverloadRetry + jitter}
}

// admitOne takes one of the enrollment slots (Config.MaxInFlight), or
// answers overloaded when none is free; release gives it back.
func (s *Service) admitOne() (release func(), err error) {
	if s.admit == nil {
		return func() {}, nil
	}
	select {
	case s.admit <- struct{}{}:
		return func() { <-s.admit }, nil
	default:
		return nil, s.overloaded()
	}
}

// Request is an enrollment request, decoded from any transport.
type Request struct {
	Serial          string
	ClaimToken      string
	CSR             []byte // DER
	Model           string
	FirmwareVersion string
	MAC             string
	Source          netip.AddrPort // where it came from (throttling, audit)
	Transport       string         // "coap", "coaps", "mqtt", "est", "estcoaps" (audit)
	// Factory is the factory certificate chain (leaf first) the device
	// presented, verified by the transport as a proof of possession of its
	// key (a TLS or DTLS handshake). Without a claim token it is the
	// device's identity: Serial, when set, must be the one it names.
	Factory []*x509.Certificate
	// PSKSerial is the serial whose LwM2M bootstrap PSK authenticated the
	// DTLS session the request came on (EST-coaps after an LwM2M bootstrap
	// in EST mode). Without a claim token it is the device's identity.
	PSKSerial string
	// Rekey lets a provisioned device enroll again for a new key, its
	// certificate superseded: the EST-coaps enrollment that follows an LwM2M
	// bootstrap in EST mode which PrepareLwM2M let through for a
	// provisioned device (an operator's re-bootstrap, the retry window).
	Rekey bool

	factory *FactoryIdentity // set by Enroll once Factory is verified
}

// Result is what an enrolled device receives.
type Result struct {
	DeviceID    uuid.UUID
	Chain       []*x509.Certificate // leaf first
	Root        *x509.Certificate
	Config      DeviceConfig
	FirmwareKey []byte // PEM of the key that signs firmware manifests; nil without firmware
}

// FirmwareTarget is the image a device should run, as its config carries it.
type FirmwareTarget struct {
	Version   string
	Size      int64
	SHA256    string
	URIs      []string // where to download it
	Manifest  []byte   // the signed manifest bytes
	Signature []byte
}

// FirmwareSource says which image a device should run.
type FirmwareSource interface {
	// Target is the device's target, nil when nothing targets it.
	Target(ctx context.Context, d devices.Device) (*FirmwareTarget, error)
	// PublicKeyPEM is the key devices verify manifests with.
	PublicKeyPEM() []byte
}

// DeviceConfig is a site profile rendered for one device.
type DeviceConfig struct {
	Version  uint64
	WiFi     WiFi
	Network  Network
	Lease    Lease
	Firmware *FirmwareTarget // nil: no target
}

// WiFi is the network a device joins.
type WiFi struct {
	SSID       string
	Security   string
	Passphrase string // PSK and SAE modes
	EAP        *EAP   // enterprise modes
}

// EAP is how a device of an enterprise site joins: EAP-TLS with its
// certificate from provisiond's CA.
type EAP struct {
	Method     string            // "tls"
	Identity   string            // the outer identity: the device's UUID
	ServerName string            // the RADIUS server certificate's name to check; "" none
	CA         *x509.Certificate // the CA the RADIUS server's certificate chains to: provisiond's root
}

// Network is the device's static addressing.
type Network struct {
	Address   netip.Addr
	PrefixLen int
	Gateway   netip.Addr
	DNS       []netip.Addr
	NTP       []string
}

// Lease is the device's address and when it must renew.
type Lease struct {
	Address   netip.Addr
	ExpiresAt time.Time
}

// Enroll authenticates a device by its claim token and issues its
// certificate, config and lease, recording all of it in one transaction.
// Errors wrap this package's sentinels; RetryAfter tells when to retry.
func (s *Service) Enroll(ctx context.Context, req Request) (Result, error) {
	release, err := s.admitOne()
	if err != nil {
		return Result{}, err
	}
	defer release()
	now := s.clock.Now()
	if len(req.Factory) > 0 && req.ClaimToken == "" {
		fid, err := s.IdentifyFactory(ctx, req.Factory)
		if err != nil {
			s.log.Info("enrollment refused", "serial", req.Serial, "source", req.Source, "reason", err)
			return Result{}, err
		}
		if req.Serial != "" && req.Serial != fid.Serial {
			return Result{}, fmt.Errorf("%w: the certificate names serial %s, not %s", ErrFactoryCert, fid.Serial, req.Serial)
		}
		req.Serial, req.factory = fid.Serial, &fid
	} else if req.PSKSerial != "" && req.ClaimToken == "" {
		if req.Serial != "" && req.Serial != req.PSKSerial {
			return Result{}, fmt.Errorf("%w: the session's PSK is %s's, not %s's", ErrUnauthorized, req.PSKSerial, req.Serial)
		}
		req.Serial = req.PSKSerial
	}
	srcKey, th, err := s.checkThrottles(ctx, req.Serial, req.Source, now)
	if err != nil {
		return Result{}, err
	}
	csr, err := s.validate(req)
	if err != nil {
		return Result{}, err
	}
	var d devices.Device
	switch {
	case req.factory != nil:
		d, err = s.authenticateFactory(ctx, req, *req.factory, now, srcKey, th)
	case req.PSKSerial != "" && req.ClaimToken == "":
		// The handshake proved the PSK, which BootstrapPSK gave for this
		// serial only.
		if d, err = s.store.DeviceBySerial(ctx, req.Serial); errors.Is(err, devices.ErrNotFound) {
			err = ErrUnauthorized
		}
	default:
		d, err = s.authenticate(ctx, req, now, srcKey, th)
	}
	if err != nil {
		return Result{}, err
	}
	keyHash := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	for range 3 {
		res, err := s.enrollOnce(ctx, req, csr, keyHash[:], d, now)
		if err == nil && srcKey != "" {
			s.bySource.succeed(ctx, srcKey, th.source)
		}
		if !errors.Is(err, devices.ErrConflict) {
			return res, err
		}
		// Someone else changed the device (a parallel retry of the same
		// device): decide again on what is stored now.
		if d, err = s.store.DeviceBySerial(ctx, req.Serial); err != nil {
			return Result{}, fmt.Errorf("enroll %s: %w", req.Serial, err)
		}
	}
	return Result{}, fmt.Errorf("enroll %s: %w", req.Serial, devices.ErrConflict)
}

// checkThrottles checks a request against the per-source and per-serial
// throttles. It returns the source's throttle key ("" when the source is not
// throttled: unknown behind an external MQTT broker, or a load balancer's)
// and which throttles had failures on record (a success then clears them).
func (s *Service) checkThrottles(ctx context.Context, serial string, source netip.AddrPort, now time.Time) (string, throttled, error) {
	srcKey := ""
	var th throttled
	if source.IsValid() && !s.fromLB(source.Addr()) {
		srcKey = source.Addr().String()
		ok, wait, seen, err := s.bySource.allow(ctx, srcKey, now)
		if err != nil {
			return "", th, err
		}
		if !ok {
			return "", th, &RetryError{Err: ErrThrottled, After: wait}
		}
		th.source = seen
	}
	ok, wait, seen, err := s.bySerial.allow(ctx, serial, now)
	if err != nil {
		return "", th, err
	}
	if !ok {
		return "", th, &RetryError{Err: ErrThrottled, After: wait}
	}
	th.serial = seen
	return srcKey, th, nil
}

// failed counts a failed attempt against the serial and, when it is
// throttled, the source.
func (s *Service) failed(ctx context.Context, serial, srcKey string, now time.Time) {
	s.bySerial.fail(ctx, serial, now)
	if srcKey != "" {
		s.bySource.fail(ctx, srcKey, now)
	}
}

func (s *Service) validate(req Request) (*x509.CertificateRequest, error) {
	switch {
	case !devices.ValidSerial(req.Serial):
		return nil, fmt.Errorf("%w: serial: must be 1-64 of [A-Za-z0-9._-]", ErrInvalid)
	case len(req.Model) > s.cfg.MaxFieldBytes || len(req.FirmwareVersion) > s.cfg.MaxFieldBytes || len(req.MAC) > 32:
		return nil, fmt.Errorf("%w: model, firmware_version or mac too long", ErrInvalid)
	}
	if req.factory == nil && (req.PSKSerial == "" || req.ClaimToken != "") {
		if err := CheckToken(req.ClaimToken); err != nil {
			return nil, err
		}
	}
	return s.parseCSR(req.CSR)
}

// decoyHash stands in for an unknown serial's token hash so that the
// comparison costs the same whether or not the serial exists.
var decoyHash = sha256.Sum256([]byte("provisiond decoy token hash"))

// throttled says which throttles had failures on record for a request (a
// success then clears them).
type throttled struct{ serial, source bool }

func (s *Service) authenticate(ctx context.Context, req Request, now time.Time, srcKey string, th throttled) (devices.Device, error) {
	d, err := s.store.DeviceBySerial(ctx, req.Serial)
	known := err == nil
	if err != nil && !errors.Is(err, devices.ErrNotFound) {
		return d, fmt.Errorf("enroll %s: %w", req.Serial, err)
	}
	want := decoyHash[:]
	if known && len(d.TokenHash) == sha256.Size {
		want = d.TokenHash
	}
	got := HashToken(req.ClaimToken)
	if subtle.ConstantTimeCompare(got, want)&boolInt(known) != 1 {
		s.failed(ctx, req.Serial, srcKey, now)
		s.log.Info("enrollment refused", "serial", req.Serial, "source", req.Source, "reason", "unauthorized")
		return d, ErrUnauthorized
	}
	s.bySerial.succeed(ctx, req.Serial, th.serial)
	return d, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *Service) enrollOnce(ctx context.Context, req Request, csr *x509.CertificateRequest, keyHash []byte, d devices.Device, now time.Time) (Result, error) {
	switch d.State {
	case devices.StateRevoked:
		return Result{}, ErrRevoked
	case devices.StateProvisioned, devices.StateActive:
		if req.Rekey {
			break // a new certificate, as the bootstrap before it allowed
		}
		if subtle.ConstantTimeCompare(d.PublicKeyHash, keyHash) != 1 {
			return Result{}, ErrTokenUsed
		}
		if now.Sub(d.ProvisionedAt) > s.cfg.RetryWindow {
			return Result{}, ErrAlreadyProvisioned
		}
		return s.replay(ctx, d) // a retry whose answer was lost: same answer again
	case devices.StateManufactured:
		return Result{}, &RetryError{Err: ErrNotClaimed, After: s.cfg.NotClaimedRetry}
	case devices.StateClaimed:
	default:
		return Result{}, fmt.Errorf("enroll %s: unknown state %q", d.Serial, d.State)
	}
	if d.Site == "" {
		return Result{}, &RetryError{Err: ErrNotClaimed, After: s.cfg.NotClaimedRetry}
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return Result{}, fmt.Errorf("enroll %s: %w", d.Serial, err)
	}
	model := d.Model
	if model == "" {
		model = req.Model
	}
	// Sign outside the write transaction; a failed commit leaves only an
	// unrecorded certificate that nobody ever received.
	leaf, err := s.signer.IssueDevice(csr, profile.Device{ID: d.ID, Serial: d.Serial, Model: model, Site: d.Site})
	if err != nil {
		return Result{}, fmt.Errorf("enroll %s: %w", d.Serial, err)
	}
	certSerial := fmt.Sprintf("%x", leaf.SerialNumber)
	detail := map[string]string{"device_id": d.ID.String(), "transport": req.Transport, "cert_serial": certSerial, "site": d.Site}
	if req.factory != nil {
		detail["auth"], detail["factory_ca"] = "factory-certificate", req.factory.CA.ID
	}
	rekey := req.Rekey && d.CertSerial != ""
	wifiPSK, err := s.newWiFiPSK(site, d)
	if err != nil {
		return Result{}, fmt.Errorf("enroll %s: %w", d.Serial, err)
	}
	stored, err := s.store.Provision(ctx, devices.Provisioning{
		DeviceID:  d.ID,
		Rev:       d.Rev,
		Now:       now.UTC(),
		Supersede: rekey,
		Apply: func(x *devices.Device) {
			x.State = devices.StateProvisioned
			x.Rebootstrap = false
			x.Model = model
			if req.FirmwareVersion != "" {
				x.FirmwareVersion = req.FirmwareVersion
			}
			if req.MAC != "" {
				x.MAC = req.MAC
			}
			if wifiPSK != "" {
				x.WiFiPSK = wifiPSK
			}
			x.CertSerial, x.CertDER, x.CertNotAfter = certSerial, leaf.Raw, leaf.NotAfter
			x.PublicKeyHash = keyHash
			x.ConfigVersion++ // per device: grows with every change to its config
			x.ProvisionedAt = now.UTC()
			if req.factory != nil {
				x.FactoryCA = req.factory.CA.ID
			}
		},
		Audit: devices.AuditEvent{
			Actor: "device:" + d.Serial, Action: "device.enroll", Target: d.Serial, Source: req.Source.String(),
			Detail: detail,
		},
	})
	switch {
	case errors.Is(err, devices.ErrPoolExhausted):
		s.log.Warn("enrollment refused", "serial", d.Serial, "site", d.Site, "reason", "pool exhausted")
		return Result{}, &RetryError{Err: fmt.Errorf("%w: site %q", ErrPoolExhausted, d.Site), After: s.cfg.PoolRetry}
	case err != nil:
		return Result{}, err
	}
	if rekey && s.onSuperseded != nil {
		s.onSuperseded()
	}
	s.log.Info("device enrolled", "serial", d.Serial, "device_id", d.ID, "site", d.Site,
		"address", stored.Lease.Addr, "transport", req.Transport)
	res, err := s.result(ctx, stored, site, leaf)
	if err == nil {
		s.notify(stored.ID, res.Config)
	}
	return res, err
}

// replay rebuilds the answer a device already received from what is stored.
func (s *Service) replay(ctx context.Context, d devices.Device) (Result, error) {
	leaf, err := x509.ParseCertificate(d.CertDER)
	if err != nil {
		return Result{}, fmt.Errorf("replay %s: stored certificate: %w", d.Serial, err)
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return Result{}, fmt.Errorf("replay %s: %w", d.Serial, err)
	}
	return s.result(ctx, d, site, leaf)
}

func (s *Service) result(ctx context.Context, d devices.Device, site devices.Site, leaf *x509.Certificate) (Result, error) {
	if d.Lease == nil {
		return Result{}, fmt.Errorf("device %s: %w", d.Serial, devices.ErrNoLease)
	}
	cfg, err := s.render(ctx, site, d)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		DeviceID: d.ID,
		Chain:    []*x509.Certificate{leaf, s.signer.Intermediate()},
		Root:     s.signer.Root(),
		Config:   cfg,
	}
	if s.firmware != nil {
		res.FirmwareKey = s.firmware.PublicKeyPEM()
	}
	return res, nil
}

// render opens the sealed passphrases of a site and a device's override and
// renders the device's config.
func (s *Service) render(ctx context.Context, site devices.Site, d devices.Device) (DeviceConfig, error) {
	var err error
	if site.Passphrase, err = open(s.cfg.Secrets, site.Passphrase); err != nil {
		return DeviceConfig{}, fmt.Errorf("site %s passphrase: %w", site.Name, err)
	}
	if d.Override != nil && d.Override.Passphrase != "" {
		o := *d.Override
		if o.Passphrase, err = open(s.cfg.Secrets, o.Passphrase); err != nil {
			return DeviceConfig{}, fmt.Errorf("device %s override passphrase: %w", d.Serial, err)
		}
		d.Override = &o
	}
	if d.WiFiPSK, err = open(s.cfg.Secrets, d.WiFiPSK); err != nil {
		return DeviceConfig{}, fmt.Errorf("device %s wifi passphrase: %w", d.Serial, err)
	}
	cfg := Render(site, d)
	if cfg.WiFi.EAP != nil {
		cfg.WiFi.EAP.CA = s.signer.Root()
	}
	if s.firmware != nil {
		if cfg.Firmware, err = s.firmware.Target(ctx, d); err != nil {
			return DeviceConfig{}, fmt.Errorf("firmware target of %s: %w", d.Serial, err)
		}
	}
	return cfg, nil
}

// Render turns a site profile, a device's override and its lease into the
// device's config.
func Render(site devices.Site, d devices.Device) DeviceConfig {
	c := DeviceConfig{
		Version: d.ConfigVersion,
		WiFi:    WiFi{SSID: site.SSID, Security: string(site.Security), Passphrase: site.Passphrase},
		Network: Network{PrefixLen: site.CIDR.Bits(), Gateway: site.Gateway, DNS: site.DNS, NTP: site.NTP},
	}
	if site.PerDevicePSK && d.WiFiPSK != "" {
		c.WiFi.Passphrase = d.WiFiPSK // the device's own (in clear here)
	}
	if d.Lease != nil {
		c.Network.Address = d.Lease.Addr
		c.Lease = Lease{Address: d.Lease.Addr, ExpiresAt: d.Lease.Expires}
	}
	if o := d.Override; o != nil {
		if o.SSID != "" {
			c.WiFi.SSID = o.SSID
		}
		if o.Security != "" {
			c.WiFi.Security = string(o.Security)
		}
		if o.Passphrase != "" {
			c.WiFi.Passphrase = o.Passphrase
		}
		if o.DNS != nil {
			c.Network.DNS = o.DNS
		}
		if o.NTP != nil {
			c.Network.NTP = o.NTP
		}
	}
	if devices.Security(c.WiFi.Security).Enterprise() {
		c.WiFi.Passphrase = ""
		c.WiFi.EAP = &EAP{Method: "tls", Identity: d.ID.String(), ServerName: site.RADIUSServerName}
	}
	return c
}

// RenewLease extends the lease of a device that authenticated with its
// certificate (the transport verified it and extracted the device ID).
func (s *Service) RenewLease(ctx context.Context, id uuid.UUID, source netip.AddrPort, transport string) (DeviceConfig, error) {
	d, err := s.store.Device(ctx, id)
	if errors.Is(err, devices.ErrNotFound) {
		return DeviceConfig{}, ErrUnknownDevice
	}
	if err != nil {
		return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
	}
	switch d.State {
	case devices.StateRevoked:
		return DeviceConfig{}, ErrRevoked
	case devices.StateProvisioned, devices.StateActive:
	default:
		return DeviceConfig{}, fmt.Errorf("%w: device %s is %s, not provisioned", ErrUnknownDevice, d.Serial, d.State)
	}
	d, err = s.store.RenewLease(ctx, id, s.clock.Now().UTC(), devices.AuditEvent{
		Actor: "device:" + d.Serial, Action: "lease.renew", Target: d.Serial, Source: source.String(),
		Detail: map[string]string{"transport": transport},
	})
	if errors.Is(err, devices.ErrPoolExhausted) {
		return DeviceConfig{}, &RetryError{Err: ErrPoolExhausted, After: s.cfg.PoolRetry}
	}
	if err != nil {
		return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
	}
	// A device enrolled before its site gave each device its own Wi-Fi
	// passphrase gets one now, with a new config version.
	if psk, err := s.newWiFiPSK(site, d); err != nil {
		return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
	} else if psk != "" {
		if d, err = s.store.UpdateDevice(ctx, id, func(x *devices.Device) (*devices.AuditEvent, error) {
			if x.WiFiPSK != "" || x.State == devices.StateRevoked {
				return nil, nil
			}
			x.WiFiPSK = psk
			x.ConfigVersion++
			return &devices.AuditEvent{Time: s.clock.Now().UTC(), Actor: "device:" + x.Serial, Action: "device.wifi_psk", Target: x.Serial,
				Source: source.String(), Detail: map[string]string{"site": site.Name}}, nil
		}); err != nil {
			return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
		}
	}
	cfg, err := s.render(ctx, site, d)
	if err != nil {
		return DeviceConfig{}, fmt.Errorf("renew lease: %w", err)
	}
	s.notify(d.ID, cfg)
	return cfg, nil
}

// Authorize reports whether a device presenting a certificate with this
// identity may connect: it exists, is not revoked, and the certificate is its
// current one.
func (s *Service) Authorize(ctx context.Context, id uuid.UUID, certSerial string) error {
	d, err := s.store.Device(ctx, id)
	if errors.Is(err, devices.ErrNotFound) {
		return ErrUnknownDevice
	}
	if err != nil {
		return err
	}
	if d.State == devices.StateRevoked {
		return ErrRevoked
	}
	if d.CertSerial == certSerial {
		return nil
	}
	if d.PrevCertSerial == certSerial && s.clock.Now().Sub(d.RenewedAt) <= s.cfg.RetryWindow {
		return nil // renewed moments ago: the device may not have the new one yet
	}
	return fmt.Errorf("%w: certificate %s is not the device's current one", ErrRevoked, certSerial)
}

// fromLB reports whether addr is a load balancer's (Config.LBAddrs).
func (s *Service) fromLB(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range s.cfg.LBAddrs {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
