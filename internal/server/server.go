// Package server assembles provisiond from its parts: the inventory, the
// embedded CA, the enrollment service and the CoAP and HTTPS front ends. It
// owns the data directory layout and first-start set-up. cmd/provisiond and
// the end-to-end tests both start the service through it.
package server

import (
	"archive/tar"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provisiond/provisiond/internal/atomicfile"
	"github.com/provisiond/provisiond/internal/cluster"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/internal/handshake"
	"github.com/provisiond/provisiond/internal/metrics"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/pki/seal"
	"github.com/provisiond/provisiond/transport/coap"
	"github.com/provisiond/provisiond/transport/dhcp"
	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/lwm2m"
	"github.com/provisiond/provisiond/transport/mqtt"
	"github.com/provisiond/provisiond/transport/web"
)

// Version is the service version reported by the API.
var Version = "0.1.0-dev"

// Files inside the data directory.
const (
	InventoryFile = "inventory.db"
	// EtcdSnapshotFile is the backup's inventory when it lives in etcd:
	// etcd's snapshot (etcdutl snapshot restore), see docs/cluster.md.
	EtcdSnapshotFile = "etcd.snapshot"
	CADir            = "ca"
	FirmwareDir      = "firmware" // the firmware catalogue (package firmware)
	PassphraseFile   = "ca.passphrase"
	AdminTokenFile   = httpapi.AdminTokenFile
	RootFile         = httpapi.RootFile
	ServerInfoFile   = httpapi.ServerInfoFile // where the running server's API listens, for provctl --data
)

// PassphraseEnv names the environment variable that provisiond reads the CA
// key passphrase from (cmd/provisiond: the setting ca-passphrase).
const PassphraseEnv = "PROVISIOND_CA_PASSPHRASE"

// Config is everything the service needs to start. Defaults() fills it.
type Config struct {
	DataDir       string
	CoAPSAddr     string // "" disables DTLS (not recommended)
	CoAPAddr      string // plain CoAP; only with InsecureCoAP
	InsecureCoAP  bool
	HTTPAddr      string
	MQTTAddr      string // embedded broker, MQTT over TLS; "" disables it
	MQTTPlainAddr string // embedded broker, plain MQTT; only with InsecureMQTT
	InsecureMQTT  bool
	MQTTBroker    string   // external broker URL (mqtts://host:port): replaces the embedded one
	MQTTCAFile    string   // PEM roots for the external broker's certificate (default: provisiond's root)
	MQTTBootstrap string   // the external broker URL devices bootstrap on (default MQTTBroker)
	MQTTClientID  string   // this replica's client ID on the external broker (default provisiond-<hostname>)
	AdvertiseHost string   // host devices use to reach the service (bundles, certificates)
	ServerNames   []string // extra DNS names / IPs for the server certificate
	CAPassphrase  string   // when empty: the generated one in the data directory (a new CA only)
	CertLifetime  time.Duration
	CertTemplate  string // file with an x509util template; empty = built-in
	Enroll        enroll.Config
	Fleet         enroll.FleetConfig
	MaxHandshakes int // DTLS, MQTT TLS and HTTPS handshakes in progress at once, per listener (default 64)
	// HandshakeWait is how long a new session waits for a handshake slot
	// before it is dropped; HandshakeTimeout bounds one handshake;
	// IdleTimeout closes a DTLS session idle this long.
	HandshakeWait    time.Duration
	HandshakeTimeout time.Duration
	IdleTimeout      time.Duration
	StoreBatchWait   time.Duration
	// AuditRetention is how long audit events are kept (0: forever); the
	// oldest are pruned, each chain keeping an anchor so what is left still
	// verifies (docs/operations.md).
	AuditRetention time.Duration
	// Store is where the inventory lives: "" for the bbolt file in the
	// data directory, or etcd://host:port[,host:port...][/prefix] (etcds://
	// with TLS) for a cluster shared by several replicas.
	Store string
	Etcd  EtcdConfig
	// Clock tells the time to the workflows (lease expiry, retry and
	// renewal windows); nil is the system clock. Tests move it forward
	// instead of sleeping. Not a flag.
	Clock enroll.Clock `json:"-"`
	// Front ends mounted from outside: CoAP resources on the DTLS listener
	// and HTTPS routes beside the API (guarded by role like its own). Not
	// flags: a new protocol's package supplies them.
	CoAPResources []coap.Resource `json:"-"`
	Routes        []httpapi.Route `json:"-"`
	// LwM2MEndpoint is the pattern of LwM2M endpoint names ("{serial}" by
	// default, e.g. "urn:dev:ops:acme-{serial}"); LwM2MTimeout bounds one
	// bootstrap (default 60s).
	LwM2MEndpoint string
	LwM2MTimeout  time.Duration
	// LwM2MAddr is a second DTLS listen address serving the same resources
	// (LwM2M clients expect the bootstrap server on its own port); empty:
	// the DTLS listener alone.
	LwM2MAddr string
	// DHCP serves the inventory's leases (transport/dhcp): on the interface
	// DHCPInterface (a site's LAN), and/or relayed requests on DHCPAddr
	// (default :67 with an interface); DHCPServerIP is the server
	// identifier (default: the interface's address). All empty: no DHCP.
	DHCPInterface string
	DHCPAddr      string
	DHCPServerIP  string
	// DHCPConn is a socket opened elsewhere to serve DHCP on (a test's
	// network namespace); not a flag.
	DHCPConn net.PacketConn `json:"-"`
	// OCSPAddr serves OCSP (POST /ocsp, GET /ocsp/...) and the CRL (GET
	// /crl) over plain HTTP, for clients that do not speak HTTPS to an OCSP
	// responder (FreeRADIUS); their answers are signed. Empty: only on the
	// HTTPS listener.
	OCSPAddr  string
	DebugAddr string // net/http/pprof listener (plain HTTP: keep it on loopback); empty disables
}

// openStore opens the inventory cfg names: the bbolt file in the data
// directory, or the etcd cluster of cfg.Store (whose engine it returns too;
// nil on bbolt).
func openStore(ctx context.Context, cfg Config) (*devices.Store, *etcdkv.DB, error) {
	if cfg.Store == "" {
		st, err := OpenInventory(ctx, filepath.Join(cfg.DataDir, InventoryFile), boltkv.Options{MaxBatchDelay: cfg.StoreBatchWait})
		return st, nil, err
	}
	db, err := etcdkv.Dial(ctx, cfg.Store, etcdkv.DialConfig{CAFile: cfg.Etcd.CAFile, CertFile: cfg.Etcd.CertFile,
		KeyFile: cfg.Etcd.KeyFile, Username: cfg.Etcd.Username, Password: cfg.Etcd.Password})
	if err != nil {
		return nil, nil, fmt.Errorf("store: %w", err)
	}
	if err := checkLayouts(ctx, db); err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	st, err := devices.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return st, db, nil
}

// OpenInventory opens the inventory in the bbolt file at path (the
// embedded engine), creating it when absent. A store of an older layout is
// copied to path.before-MIGRATIONS before New brings it up to date.
func OpenInventory(ctx context.Context, path string, opts boltkv.Options) (*devices.Store, error) {
	opts.Buckets, opts.AppendBuckets = devices.Buckets, devices.AppendBuckets
	db, err := boltkv.Open(path, opts)
	if err != nil {
		return nil, err
	}
	due, err := devices.Migrations(ctx, db)
	if err == nil && len(due) > 0 {
		err = copyBefore(ctx, db, path, due)
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	st, err := devices.New(ctx, db)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return st, nil
}

// copyBefore writes a consistent copy of the store beside it, named after
// the migrations about to run.
func copyBefore(ctx context.Context, db *boltkv.DB, path string, due []string) error {
	var slugs []string
	for _, m := range due {
		slugs = append(slugs, strings.ReplaceAll(m, " ", "-"))
	}
	dst := path + ".before-" + strings.Join(slugs, "+")
	return db.Snapshot(ctx, func(_ int64, write func(io.Writer) error) error {
		f, err := os.OpenFile(dst+".tmp", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("copy the inventory before migrating: %w", err)
		}
		if err := write(f); err != nil {
			f.Close()
			return fmt.Errorf("copy the inventory before migrating: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Rename(dst+".tmp", dst)
	})
}

// Defaults returns the embedded defaults that `go run ./cmd/provisiond` uses.
func Defaults() Config {
	return Config{
		DataDir:          "./data",
		CoAPSAddr:        ":5684",
		HTTPAddr:         ":8443",
		MQTTAddr:         ":8883",
		AdvertiseHost:    "localhost",
		CertLifetime:     90 * 24 * time.Hour,
		MaxHandshakes:    handshake.DefaultSlots,
		HandshakeWait:    5 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		IdleTimeout:      60 * time.Second,
		StoreBatchWait:   boltkv.DefaultMaxBatchDelay,
		Enroll:           enroll.DefaultConfig(),
	}
}

// Validate checks the configuration; messages name the field.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("data: required")
	case c.CoAPSAddr == "" && c.CoAPAddr == "":
		return errors.New("coaps-addr: at least one CoAP listener is required")
	case c.CoAPAddr != "" && !c.InsecureCoAP:
		return errors.New("coap-addr: plain CoAP needs --insecure-coap (claim tokens would travel in clear)")
	case c.HTTPAddr == "":
		return errors.New("http-addr: required")
	case c.MQTTPlainAddr != "" && !c.InsecureMQTT:
		return errors.New("mqtt-plain-addr: plain MQTT needs --insecure-mqtt (claim tokens would travel in clear)")
	case c.MQTTBroker != "" && !strings.HasPrefix(c.MQTTBroker, "mqtts://") && !(c.InsecureMQTT && strings.HasPrefix(c.MQTTBroker, "mqtt://")):
		return fmt.Errorf("mqtt-broker: %q: want mqtts://host:port (mqtt:// only with --insecure-mqtt)", c.MQTTBroker)
	case c.CertLifetime < time.Hour:
		return errors.New("cert-lifetime: at least 1h")
	case c.AdvertiseHost == "":
		return errors.New("advertise-host: required")
	case c.Store != "" && !strings.HasPrefix(c.Store, "etcd://") && !strings.HasPrefix(c.Store, "etcds://"):
		return fmt.Errorf("store: %q: want etcd://host:port[,host:port...] (or etcds://), or nothing for the bbolt file in the data directory", c.Store)
	}
	if c.Store != "" {
		if _, err := etcdkv.ParseURL(c.Store); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	for name, addr := range map[string]string{"coaps-addr": c.CoAPSAddr, "coap-addr": c.CoAPAddr, "http-addr": c.HTTPAddr,
		"mqtt-addr": c.MQTTAddr, "mqtt-plain-addr": c.MQTTPlainAddr} {
		if addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s: %q is not host:port (%v)", name, addr, err)
		}
	}
	return nil
}

// EtcdConfig is how a replica authenticates to etcd (Store etcds://...).
type EtcdConfig struct {
	CAFile   string // PEM roots for etcd's certificates
	CertFile string // client certificate and key, when etcd asks for one
	KeyFile  string
	Username string // etcd's own authentication, when enabled
	Password string `json:"-"`
}

// Server is a running provisiond.
type Server struct {
	cfg       Config
	caHint    *caHint
	httpsGate *httpsGate
	log       *slog.Logger
	store     *devices.Store
	ca        *pki.CA
	coap      *coap.Server
	dhcp      *dhcp.Server
	ocsp      *http.Server // plain-HTTP OCSP and CRL (Config.OCSPAddr)
	ocspLn    net.Listener
	lwm2mEP   lwm2m.Endpoint
	broker    *mqtt.Broker // embedded broker, or nil
	remote    *mqtt.Remote // external broker connection, or nil
	http      *http.Server
	httpLn    net.Listener
	debug     *http.Server
	errs      chan error

	metrics *metrics.Metrics

	crlMu    sync.Mutex
	crl      atomic.Pointer[[]byte] // current DER CRL
	crlDirty chan struct{}          // a renewal superseded a certificate
	fwSrc    *firmwareSource        // firmware targets and images
	relay    *relay                 // the workflows' news, to the front ends
	stop     chan struct{}

	lock *os.File      // the data directory's lock (LockFile)
	etcd *etcdkv.DB    // the inventory's etcd engine; nil on bbolt
	node *cluster.Node // this replica's membership; nil alone
	cat  *catalogue    // the firmware catalogue, shared in a cluster
	once sync.Once
	bg   sync.WaitGroup // background loops, waited for before the store closes
}

// Start opens the data directory (creating the CA and admin token on first
// start) and starts every listener. It fails at once when another provisiond
// uses the same data directory.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	s := &Server{cfg: cfg, log: log, errs: make(chan error, 4), stop: make(chan struct{}), crlDirty: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			_ = s.Shutdown(context.Background())
		}
	}()
	if s.lock, err = lockDataDir(cfg.DataDir, time.Second); err != nil {
		return nil, err
	}
	s.store, s.etcd, err = openStore(ctx, cfg)
	if errors.Is(err, boltkv.ErrLocked) {
		return nil, fmt.Errorf("data directory %s is in use by another provisiond (its inventory is locked); stop it or use --data", cfg.DataDir)
	}
	if err != nil {
		return nil, err
	}
	pass, err := s.passphrase()
	if err != nil {
		return nil, err
	}
	tmpl := ""
	if cfg.CertTemplate != "" {
		b, err := os.ReadFile(cfg.CertTemplate)
		if err != nil {
			return nil, fmt.Errorf("cert-template: %w", err)
		}
		tmpl = string(b)
	}
	caCfg := pki.Config{Dir: filepath.Join(cfg.DataDir, CADir), Passphrase: []byte(pass),
		DeviceLifetime: cfg.CertLifetime, DeviceTemplate: tmpl}
	if cfg.Store != "" {
		// A cluster's CA and firmware key live in the store; the first
		// replica puts its own there (or a new one), the others take them.
		create := map[string]func() error{
			CADir: func() error { _, _, err := pki.Open(caCfg); return err },
			FirmwareDir: func() error {
				_, err := firmware.Open(filepath.Join(cfg.DataDir, FirmwareDir), []byte(pass))
				return err
			},
		}
		for _, d := range sharedDirs {
			if err := s.shareFiles(ctx, d.dir, d.names, d.what, create[d.dir]); err != nil {
				return nil, err
			}
		}
	}
	ca, created, err := pki.Open(caCfg)
	if err != nil {
		return nil, err
	}
	s.ca = ca
	if created {
		log.Info("created embedded CA", "dir", filepath.Join(cfg.DataDir, CADir), "root", ca.Root().Subject.CommonName)
	}
	if cfg.Store != "" {
		// Replicas sharing an inventory must share its CA: one that was
		// given another refuses to start rather than issue certificates
		// the others do not trust.
		fp := sha256.Sum256(ca.Root().Raw)
		if err := s.store.BindCA(ctx, fp[:]); err != nil {
			return nil, fmt.Errorf("store %s: %w (see docs/cluster.md)", cfg.Store, err)
		}
	}
	rootPath := filepath.Join(cfg.DataDir, RootFile)
	if err := atomicfile.Write(rootPath, ca.RootPEM(), 0o644); err != nil {
		return nil, err
	}
	access := enroll.NewAccess(s.store, ca)
	if err := s.adminToken(ctx, access); err != nil {
		return nil, err
	}
	serverCert, err := ca.NewServerCertificate(s.serverNames(), s.serverIPs(), 30*24*time.Hour)
	if err != nil {
		return nil, err
	}

	// Wi-Fi passphrases are sealed in the inventory under a key derived
	// from the same master secret as the CA keys.
	sealer, err := seal.New([]byte(pass))
	if err != nil {
		return nil, err
	}
	cfg.Enroll.Secrets = sealer
	fwCat, err := firmware.Open(filepath.Join(cfg.DataDir, FirmwareDir), []byte(pass))
	if err != nil {
		return nil, err
	}
	if err := importLegacyTargets(ctx, fwCat, s.store, log); err != nil {
		return nil, err
	}
	// Images are downloaded where the listeners are (known once they are up).
	cat, err := newCatalogue(s, fwCat, ca)
	if err != nil {
		return nil, err
	}
	s.cat = cat
	if s.clustered() {
		if err := cat.shareLocal(ctx); err != nil {
			return nil, fmt.Errorf("firmware manifests of the cluster: %w", err)
		}
		cfg.Routes = append(slices.Clone(cfg.Routes), cat.imageRoute())
	}
	fwSrc := &firmwareSource{cat: cat, store: s.store, open: map[string]*os.File{}, uris: func(digest string) []string {
		return []string{"https://" + net.JoinHostPort(cfg.AdvertiseHost, port(s.httpLn.Addr())) + "/fw/" + digest,
			"coaps://" + net.JoinHostPort(cfg.AdvertiseHost, port(s.coap.SecureAddr())) + "/fw/" + digest}
	}}
	s.fwSrc = fwSrc
	// The workflows tell the relay what changed; it reaches the front ends,
	// which are built after the workflows they serve.
	s.relay = &relay{s: s}
	// In a cluster the throttles count in the shared inventory: cycling
	// replicas gives an attacker no more attempts.
	var throttles enroll.ThrottleStore
	if s.clustered() {
		throttles = s.store
		cfg.Fleet.Throttles = s.store
	}
	svc := enroll.New(cfg.Enroll, enroll.Ports{Store: s.store, Signer: ca, Clock: cfg.Clock, Firmware: fwSrc,
		Notify: s.relay, Superseded: s.relay.crlDue, Throttles: throttles}, log)
	s.relay.svc = svc
	fleet := enroll.NewFleet(cfg.Fleet, s.store, sealer, s.relay, log)
	s.relay.fleet = fleet
	if s.clustered() {
		// The cluster's current CRL, or a first one.
		err = s.loadCRL(ctx)
		if err == nil && s.crl.Load() == nil {
			err = s.refreshCRL(ctx)
		}
	} else {
		err = s.refreshCRL(ctx)
	}
	if err != nil {
		return nil, err
	}
	s.bg.Go(s.crlLoop)
	// Created before any listener starts; the gauges read the listeners at scrape time.
	s.metrics = metrics.New(metrics.Sources{
		LeasesInUse:  func() (map[string]int, error) { return s.store.LeasesInUseBySite(context.Background(), time.Now()) },
		DTLSSessions: func() int { return s.coap.Sessions() },
		Handshakes: func() map[string]handshake.Stats {
			out := map[string]handshake.Stats{"coaps": s.coap.Handshakes(), "https": s.httpsGate.gate.Stats()}
			if s.broker != nil {
				out["mqtts"] = s.broker.Handshakes()
			}
			return out
		},
		MQTTSessions: func() int {
			if s.broker == nil {
				return 0
			}
			return s.broker.Sessions()
		},
	}, log)

	clientCAs := ca.Roots().Clone()
	clientCAs.AddCert(ca.Intermediate())
	coapAddr := ""
	if cfg.InsecureCoAP {
		coapAddr = cfg.CoAPAddr
	}
	lwEP, err := lwm2m.ParseEndpoint(cfg.LwM2MEndpoint)
	if err != nil {
		return nil, err
	}
	s.lwm2mEP = lwEP
	estCfg := est.Config{Service: svc, Log: log, PSKSerial: lwEP.Serial,
		CACerts: func() []*x509.Certificate { return []*x509.Certificate{ca.Intermediate(), ca.Root()} }}
	lw := lwm2m.NewBootstrapServer(lwm2m.Config{Service: svc, Endpoint: lwEP, Timeout: cfg.LwM2MTimeout, Log: log, Observe: s.observe})
	coapResources := append(slices.Clone(cfg.CoAPResources), est.NewCoAPS(estCfg).Resources()...)
	coapResources = append(coapResources, lw.Resources()...)
	var extra []string
	if cfg.LwM2MAddr != "" {
		extra = []string{cfg.LwM2MAddr}
	}
	s.coap = coap.New(coap.Config{SecureAddr: cfg.CoAPSAddr, ExtraSecureAddrs: extra, InsecureAddr: coapAddr, Certificate: serverCert.Get,
		ClientCAs: clientCAs, Authorize: svc.Authorize, MaxHandshakes: cfg.MaxHandshakes,
		Factory: s.factoryCheck(svc),
		BootstrapPSK: func(ctx context.Context, identity string) ([]byte, error) {
			serial, ok := lwEP.Serial(identity)
			if !ok {
				return nil, enroll.ErrUnauthorized
			}
			return svc.BootstrapPSK(ctx, serial)
		},
		HandshakeQueueWait: cfg.HandshakeWait, HandshakeTimeout: cfg.HandshakeTimeout, IdleTimeout: cfg.IdleTimeout,
		CRL: s.CRL, ConfigSource: svc.Config, Report: svc.ReportState, Firmware: fwSrc, Observe: s.observe,
		Resources: coapResources}, svc, ca.Root(), log)
	s.relay.notifiers = append(s.relay.notifiers, s.coap)
	if err := s.coap.Start(); err != nil {
		return nil, err
	}
	if err := s.startMQTT(svc, serverCert, clientCAs); err != nil {
		return nil, err
	}

	// EST over HTTPS and the device routes, beside the API.
	cfg.Routes = append(slices.Clone(cfg.Routes), est.NewHTTPS(estCfg).Routes()...)
	// The CA names the HTTPS listener asks client certificates of: its own
	// and the manufacturers' (browsers offer only matching certificates).
	s.caHint = &caHint{own: clientCAs, list: s.store.FactoryCAs, log: log}
	s.httpsGate = &httpsGate{gate: newGate(cfg.MaxHandshakes, cfg.HandshakeWait, cfg.HandshakeTimeout)}
	api := httpapi.New(httpapi.Config{Inventory: s.store, Fleet: fleetFront{Fleet: fleet, changed: s.caHint.invalidate, endpoint: lwEP.Name, svc: svc}, Access: access, Revocation: s, Info: s.info,
		Metrics: s.metrics.Handler(), Ready: s.Ready, Backup: s.Backup, Cluster: s.clusterAPI(), Pages: web.Handler(),
		Firmware: &httpapi.Firmware{Catalogue: cat, Targets: enroll.NewRollouts(s.store, fwCat, fleet), Authorize: svc.Authorize},
		Routes:   cfg.Routes}, log)
	s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen https %s: %w", cfg.HTTPAddr, err)
	}
	s.http = &http.Server{
		Handler:           verifyClients(api, clientCAs),
		ConnContext:       s.httpsGate.connContext,
		ConnState:         s.httpsGate.connState,
		TLSConfig:         httpsTLS(serverCert, s.caHint, s.httpsGate, log),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := s.http.ServeTLS(s.httpLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("serve https: %w", err)
		}
	}()
	if cfg.DebugAddr != "" {
		if err := s.startDebug(); err != nil {
			return nil, err
		}
	}
	if cfg.OCSPAddr != "" {
		if err := s.startOCSP(cfg.OCSPAddr, api, log); err != nil {
			return nil, err
		}
	}
	if err := s.writeServerInfo(); err != nil {
		return nil, err
	}
	log.Info("provisiond ready",
		"data", cfg.DataDir, "root_ca", rootPath, "admin_token", filepath.Join(cfg.DataDir, AdminTokenFile),
		"https", "https://"+s.HTTPAddr().String(), "endpoints", strings.Join(s.info().Endpoints, " "))
	if s.clustered() {
		// Other replicas' changes reach the sessions held here; the
		// elected replica resumes the jobs of replicas that died.
		if err := s.joinCluster(ctx, svc, fleet); err != nil {
			return nil, err
		}
	} else {
		// Bulk jobs a stop or a crash interrupted go on where they stopped.
		jobsCtx, cancelJobs := context.WithCancel(context.Background())
		s.bg.Go(func() {
			<-s.stop
			cancelJobs()
		})
		s.bg.Go(func() {
			t := time.NewTicker(time.Minute)
			defer t.Stop()
			for {
				s.pruneAudit(jobsCtx)
				select {
				case <-jobsCtx.Done():
					return
				case <-t.C:
				}
			}
		})
		s.bg.Go(func() {
			if err := fleet.ResumeJobs(jobsCtx, 0); err != nil && jobsCtx.Err() == nil {
				log.Error("resume jobs", "err", err)
			}
		})
	}
	if cfg.DHCPInterface != "" || cfg.DHCPAddr != "" || cfg.DHCPConn != nil {
		var sid netip.Addr
		if cfg.DHCPServerIP != "" {
			if sid, err = netip.ParseAddr(cfg.DHCPServerIP); err != nil {
				return nil, fmt.Errorf("--dhcp-server-ip: %w", err)
			}
		}
		if s.dhcp, err = dhcp.New(dhcp.Config{Service: svc, Interface: cfg.DHCPInterface, Addr: cfg.DHCPAddr, ServerIP: sid,
			Conn: cfg.DHCPConn, Log: log.With("component", "dhcp"),
			Observe: func(result string, d time.Duration) { s.metrics.ObserveEnroll("dhcp", result, d) }}); err != nil {
			return nil, err
		}
		dhcpErr := make(chan error, 1)
		go func() {
			if err := s.dhcp.Serve(); err != nil {
				dhcpErr <- fmt.Errorf("serve dhcp: %w", err)
			}
		}()
		s.forwardErrors(dhcpErr)
		log.Info("DHCP serving the inventory's leases", "addr", s.dhcp.Addr().String(), "interface", cfg.DHCPInterface)
	}
	if s.broker != nil {
		s.forwardErrors(s.coap.Err(), s.broker.Err())
	} else {
		s.forwardErrors(s.coap.Err())
	}
	return s, nil
}

// startOCSP serves the API's OCSP and CRL routes, and nothing else, over
// plain HTTP on addr.
func (s *Server) startOCSP(addr string, api http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen ocsp %s: %w", addr, err)
	}
	only := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/ocsp", r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/ocsp/"):
		case r.Method == http.MethodGet && (r.URL.Path == "/crl" || r.URL.Path == "/api/v1/crl"):
			r.URL.Path = "/api/v1/crl"
		default:
			http.Error(w, "this listener serves POST /ocsp, GET /ocsp/{request} and GET /crl only", http.StatusNotFound)
			return
		}
		api.ServeHTTP(w, r)
	})
	s.ocsp, s.ocspLn = &http.Server{Handler: only, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}, ln
	go func() {
		if err := s.ocsp.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.errs <- fmt.Errorf("serve ocsp: %w", err)
		}
	}()
	log.Info("OCSP and CRL over plain HTTP", "addr", ln.Addr().String())
	return nil
}

// OCSPAddr is the plain-HTTP OCSP listener's address, nil without one.
func (s *Server) OCSPAddr() net.Addr {
	if s.ocspLn == nil {
		return nil
	}
	return s.ocspLn.Addr()
}

// DHCPAddr is the DHCP server's bound address, nil without one.
func (s *Server) DHCPAddr() net.Addr {
	if s.dhcp == nil {
		return nil
	}
	return s.dhcp.Addr()
}

// factoryCheck is how the device listeners check a client certificate that
// provisiond's CA did not issue: a factory certificate under a registered
// manufacturer CA.
func (s *Server) factoryCheck(svc *enroll.Service) func(ctx context.Context, chain []*x509.Certificate) error {
	return func(ctx context.Context, chain []*x509.Certificate) error {
		_, err := svc.IdentifyFactory(ctx, chain)
		return err
	}
}

// observe records an enrollment request in the metrics.
func (s *Server) observe(transport, result string, d time.Duration) {
	s.metrics.ObserveEnroll(transport, result, d)
}

// Ready reports why the service is not ready to serve devices, or nil.
func (s *Server) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil { // not Check: that reads the whole file
		return err
	}
	if s.cfg.MQTTBroker != "" && !s.MQTTConnected() {
		return errors.New("not connected to the MQTT broker " + s.cfg.MQTTBroker)
	}
	return nil
}

// Backup writes a consistent online backup of the data directory as a tar
// stream: the inventory (a snapshot taken in one read transaction) and the
// CA directory (certificates and encrypted keys). Restore by extracting it
// into an empty data directory and starting provisiond with the CA
// passphrase (docs/operations.md).
func (s *Server) Backup(ctx context.Context, w io.Writer) error {
	tw := tar.NewWriter(w)
	now := time.Now()
	for _, f := range []string{pki.RootCertFile, pki.RootKeyFile, pki.IntermediateCertFile, pki.IntermediateKeyFile} {
		raw, err := os.ReadFile(filepath.Join(s.cfg.DataDir, CADir, f))
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: CADir + "/" + f, Mode: 0o600, Size: int64(len(raw)), ModTime: now}); err != nil {
			return err
		}
		if _, err := tw.Write(raw); err != nil {
			return err
		}
	}
	// The firmware catalogue: its signing key (encrypted), manifests,
	// targets and images. Each file is written whole and renamed into place,
	// and images never change, so a file read here is complete.
	fwDir := filepath.Join(s.cfg.DataDir, FirmwareDir)
	err := filepath.WalkDir(fwDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") { // .upload-* and .tmp files are in progress
			return err
		}
		raw, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.cfg.DataDir, p)
		if err := tw.WriteHeader(&tar.Header{Name: filepath.ToSlash(rel), Mode: 0o600, Size: int64(len(raw)), ModTime: now}); err != nil {
			return err
		}
		_, err = tw.Write(raw)
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("back up firmware: %w", err)
	}
	if err := s.store.Backup(ctx, func(size int64, write func(io.Writer) error) error {
		name := InventoryFile
		if s.cfg.Store != "" {
			name = EtcdSnapshotFile
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: now}); err != nil {
			return err
		}
		return write(tw)
	}); err != nil {
		return err
	}
	return tw.Close()
}

// refreshCRL regenerates the CRL from the store's revoked certificates.
func (s *Server) refreshCRL(ctx context.Context) error {
	s.crlMu.Lock()
	defer s.crlMu.Unlock()
	now := time.Now()
	number := uint64(now.UnixNano())
	if s.clustered() {
		// One sequence for the cluster, reserved before the list is read:
		// a CRL read later never carries a lower number.
		n, err := s.store.NextCRLNumber(ctx, number)
		if err != nil {
			return err
		}
		number = n
	}
	list, err := s.store.RevokedCerts(ctx)
	if err != nil {
		return err
	}
	entries := make([]pki.Revoked, 0, len(list))
	for _, r := range list {
		n, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok {
			return fmt.Errorf("revoked certificate serial %q is not hex", r.Serial)
		}
		entries = append(entries, pki.Revoked{Serial: n, RevokedAt: r.RevokedAt})
	}
	der, err := s.ca.CRL(entries, int64(number), now)
	if err != nil {
		return err
	}
	if s.clustered() {
		stored, err := s.store.PutCRL(ctx, number, der)
		if err != nil {
			return err
		}
		if !stored { // another replica's is newer
			return s.loadCRL(ctx)
		}
		s.announce(cluster.Event{Kind: cluster.CRL})
	}
	s.crl.Store(&der)
	return nil
}

// crlLoop reissues the CRL before it expires, even without revocations, and
// shortly after renewals superseded certificates (at most every 200 ms, so
// that a wave of renewals does not re-sign the list for each one).
func (s *Server) crlLoop() {
	t := time.NewTicker(pki.CRLValidity / 2)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.crlDirty:
			select {
			case <-time.After(200 * time.Millisecond):
			case <-s.stop:
				return
			}
			if err := s.refreshCRL(context.Background()); err != nil {
				s.log.Error("regenerate CRL", "err", err)
			}
		case <-t.C:
			// In a cluster the elected replica reissues it; the others
			// reload what it stored (the event may have been missed).
			refresh := s.refreshCRL
			if !s.leading() {
				refresh = s.loadCRL
			}
			if err := refresh(context.Background()); err != nil {
				s.log.Error("regenerate CRL", "err", err)
			}
		}
	}
}

// CRL is the current DER revocation list.
func (s *Server) CRL() []byte { return *s.crl.Load() }

// OCSP answers a DER OCSP request from the inventory.
func (s *Server) OCSP(ctx context.Context, req []byte) ([]byte, error) {
	return s.ca.OCSP(req, func(serial *big.Int) (pki.Status, error) {
		st, rc, err := s.store.CertStatus(ctx, fmt.Sprintf("%x", serial))
		return pki.Status{Known: st != devices.CertUnknown, Revoked: st == devices.CertRevoked, RevokedAt: rc.RevokedAt}, err
	}, time.Now())
}

// startMQTT runs the embedded broker, or connects to the external one.
func (s *Server) startMQTT(svc *enroll.Service, serverCert *pki.ServerCertificate, clientCAs *x509.CertPool) error {
	h := mqtt.NewHandler(svc, svc, s.observe, s.log)
	if s.cfg.MQTTBroker != "" {
		roots := s.ca.Roots()
		if s.cfg.MQTTCAFile != "" {
			pem, err := os.ReadFile(s.cfg.MQTTCAFile)
			if err != nil {
				return fmt.Errorf("mqtt-ca-file: %w", err)
			}
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return fmt.Errorf("mqtt-ca-file: %s holds no PEM certificate", s.cfg.MQTTCAFile)
			}
		}
		// The service authenticates to the broker with a certificate from our
		// CA whose common name (the broker's username) is provisiond-service.
		svcCert, err := s.ca.NewServerCertificate([]string{ServiceIdentity}, nil, 30*24*time.Hour)
		if err != nil {
			return err
		}
		id := s.cfg.MQTTClientID
		if id == "" {
			host, _ := os.Hostname()
			id = "provisiond-" + host
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.remote, err = mqtt.DialRemote(ctx, mqtt.RemoteConfig{URL: s.cfg.MQTTBroker, ClientID: id, TLS: &tls.Config{
			RootCAs: roots, MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return svcCert.Get() },
		}}, h, s.log)
		if err != nil {
			return err
		}
		s.relay.notifiers = append(s.relay.notifiers, h)
		return nil
	}
	if s.cfg.MQTTAddr == "" && s.cfg.MQTTPlainAddr == "" {
		return nil
	}
	plain := ""
	if s.cfg.InsecureMQTT {
		plain = s.cfg.MQTTPlainAddr
	}
	s.broker = mqtt.NewBroker(mqtt.BrokerConfig{Addr: s.cfg.MQTTAddr, InsecureAddr: plain, Certificate: serverCert.Get,
		ClientCAs: clientCAs, Authorize: mqtt.Authorizer(svc.Authorize), MaxHandshakes: s.cfg.MaxHandshakes,
		HandshakeQueueWait: s.cfg.HandshakeWait, HandshakeTimeout: s.cfg.HandshakeTimeout, Factory: s.factoryCheck(svc)}, h, s.log)
	if err := s.broker.Start(); err != nil {
		return err
	}
	s.relay.notifiers = append(s.relay.notifiers, h)
	return nil
}

// ServiceIdentity is the common name of the certificate provisiond presents
// to an external MQTT broker (Mosquitto's username for it).
const ServiceIdentity = "provisiond-service"

// MQTTAddr is the embedded broker's bound TLS address ("" when not running).
func (s *Server) MQTTAddr() string {
	if s.broker == nil {
		return ""
	}
	return s.broker.Addr()
}

// MQTTConnected reports whether the external broker connection is up (false
// when the embedded broker is used).
func (s *Server) MQTTConnected() bool { return s.remote != nil && s.remote.Connected() }

// MQTTPlainAddr is the embedded broker's bound plain address ("" when not running).
func (s *Server) MQTTPlainAddr() string {
	if s.broker == nil {
		return ""
	}
	return s.broker.InsecureAddr()
}

// startDebug serves net/http/pprof on cfg.DebugAddr.
func (s *Server) startDebug() error {
	ln, err := net.Listen("tcp", s.cfg.DebugAddr)
	if err != nil {
		return fmt.Errorf("listen debug %s: %w", s.cfg.DebugAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	s.debug = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.debug.Serve(ln) }()
	s.log.Warn("pprof debug endpoint listening (no authentication)", "addr", ln.Addr().String())
	return nil
}

// ServerInfo is data/server.json: how local tools reach the running server.
type ServerInfo struct {
	API       string   `json:"api"` // https://host:port
	Endpoints []string `json:"endpoints"`
	PID       int      `json:"pid"`
}

func (s *Server) writeServerInfo() error {
	host, _, _ := net.SplitHostPort(s.cfg.HTTPAddr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	b, err := json.MarshalIndent(ServerInfo{API: "https://" + net.JoinHostPort(host, port(s.HTTPAddr())),
		Endpoints: s.info().Endpoints, PID: os.Getpid()}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(s.cfg.DataDir, ServerInfoFile), append(b, '\n'), 0o644)
}

func (s *Server) passphrase() (string, error) {
	if s.cfg.CAPassphrase != "" {
		return s.cfg.CAPassphrase, nil
	}
	if s.cfg.Store != "" {
		// The keys in the store are encrypted with it: every replica needs
		// the same one, so none may make up its own.
		return "", fmt.Errorf("store %s: give the cluster's CA passphrase (%s); every replica needs the same one", s.cfg.Store, PassphraseEnv)
	}
	path := filepath.Join(s.cfg.DataDir, PassphraseFile)
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read CA passphrase: %w", err)
	}
	if _, err := os.Stat(filepath.Join(s.cfg.DataDir, CADir, pki.IntermediateKeyFile)); err == nil {
		return "", fmt.Errorf("the CA exists but no passphrase was given: set %s", PassphraseEnv)
	}
	var raw [32]byte
	_, _ = rand.Read(raw[:])
	pass := base64.RawURLEncoding.EncodeToString(raw[:])
	if err := atomicfile.Write(path, []byte(pass+"\n"), 0o600); err != nil {
		return "", err
	}
	s.log.Warn("CA key passphrase generated and stored beside the keys; set "+PassphraseEnv+" and delete the file for production",
		"file", path)
	return pass, nil
}

// bootstrapAdminName names the admin token the first start mints.
const bootstrapAdminName = "admin (bootstrap)"

// adminToken makes sure the data directory holds an admin token the
// inventory knows: the first start mints one (in a cluster, the first
// replica's first start), later starts find theirs.
func (s *Server) adminToken(ctx context.Context, access *enroll.Access) error {
	path := filepath.Join(s.cfg.DataDir, AdminTokenFile)
	b, err := os.ReadFile(path)
	var secret string
	switch {
	case err == nil:
		secret = strings.TrimSpace(string(b))
	case errors.Is(err, os.ErrNotExist):
		secret, _ = enroll.NewTokenSecret()
	default:
		return fmt.Errorf("read admin token: %w", err)
	}
	if s.cfg.Store != "" && err != nil {
		// A cluster has one bootstrap admin token, made by the replica
		// that starts first; the others do not mint one of their own.
		created, err := access.EnsureTokenOnce(ctx, enroll.Actor{Name: "system"}, secret, bootstrapAdminName, devices.RoleAdmin)
		if err != nil {
			return err
		}
		if !created {
			s.log.Info("the cluster's bootstrap admin token was made by another replica; copy its "+AdminTokenFile+
				" here for provctl --data, or create tokens with provctl token create", "dir", s.cfg.DataDir)
			return nil
		}
		return atomicfile.Write(path, []byte(secret+"\n"), 0o600)
	}
	if _, err := access.EnsureToken(ctx, enroll.Actor{Name: "system"}, secret, bootstrapAdminName, devices.RoleAdmin); err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(secret+"\n"), 0o600)
}

func (s *Server) serverNames() []string {
	names := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
	}
	for _, n := range append([]string{s.cfg.AdvertiseHost}, s.cfg.ServerNames...) {
		if net.ParseIP(n) == nil && n != "" && n != "localhost" {
			names = append(names, n)
		}
	}
	return names
}

func (s *Server) serverIPs() []net.IP {
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, n := range append([]string{s.cfg.AdvertiseHost}, s.cfg.ServerNames...) {
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		}
	}
	return ips
}

func (s *Server) info() httpapi.Info {
	var eps []string
	if a := s.coap.SecureAddr(); a != nil {
		eps = append(eps, "coaps://"+net.JoinHostPort(s.cfg.AdvertiseHost, port(a)))
	}
	if a := s.coap.InsecureAddr(); a != nil {
		eps = append(eps, "coap://"+net.JoinHostPort(s.cfg.AdvertiseHost, port(a)))
	}
	switch {
	case s.remote != nil && s.cfg.MQTTBootstrap != "":
		eps = append(eps, s.cfg.MQTTBootstrap)
	case s.remote != nil:
		eps = append(eps, s.cfg.MQTTBroker)
	case s.broker != nil:
		if a := s.broker.Addr(); a != "" {
			_, p, _ := net.SplitHostPort(a)
			eps = append(eps, "mqtts://"+net.JoinHostPort(s.cfg.AdvertiseHost, p))
		}
		if a := s.broker.InsecureAddr(); a != "" {
			_, p, _ := net.SplitHostPort(a)
			eps = append(eps, "mqtt://"+net.JoinHostPort(s.cfg.AdvertiseHost, p))
		}
	}
	if s.httpLn != nil { // EST (RFC 7030) and the device routes
		eps = append(eps, "https://"+net.JoinHostPort(s.cfg.AdvertiseHost, port(s.httpLn.Addr())))
	}
	return httpapi.Info{Endpoints: eps, RootCA: string(s.ca.RootPEM()), Version: Version}
}

func port(a net.Addr) string {
	switch v := a.(type) {
	case *net.UDPAddr:
		return strconv.Itoa(v.Port)
	case *net.TCPAddr:
		return strconv.Itoa(v.Port)
	}
	_, p, _ := net.SplitHostPort(a.String())
	return p
}

// HTTPAddr is the bound HTTPS address.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// CoAPSAddr is the bound DTLS address (nil when disabled).
func (s *Server) CoAPSAddr() net.Addr { return s.coap.SecureAddr() }

// LwM2MAddr is the bound address of the separate LwM2M bootstrap listener
// (Config.LwM2MAddr), nil without one.
func (s *Server) LwM2MAddr() net.Addr {
	if a := s.coap.ExtraSecureAddrs(); len(a) > 0 {
		return a[0]
	}
	return nil
}

// Handshakes reports the DTLS handshake gate.
func (s *Server) Handshakes() handshake.Stats { return s.coap.Handshakes() }

// MQTTHandshakes reports the embedded broker's TLS handshake gate.
func (s *Server) MQTTHandshakes() handshake.Stats {
	if s.broker == nil {
		return handshake.Stats{}
	}
	return s.broker.Handshakes()
}

// CoAPAddr is the bound plain CoAP address (nil when disabled).
func (s *Server) CoAPAddr() net.Addr { return s.coap.InsecureAddr() }

// Store gives tests access to the inventory.
func (s *Server) Store() *devices.Store { return s.store }

// CA gives tests access to the CA.
func (s *Server) CA() *pki.CA { return s.ca }

// Err reports a component that failed while running (the HTTPS, CoAP or
// MQTT listeners); it is the same channel at every call.
func (s *Server) Err() <-chan error { return s.errs }

// forwardErrors hands each component's failure to Err, until shutdown:
// one goroutine per component, started once.
func (s *Server) forwardErrors(sources ...<-chan error) {
	for _, src := range sources {
		go func() {
			select {
			case err := <-src:
				select {
				case s.errs <- err:
				case <-s.stop:
				}
			case <-s.stop:
			}
		}()
	}
}

// Shutdown stops the listeners, waits for in-flight requests (until ctx
// ends) and closes the inventory. It is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	s.once.Do(func() {
		close(s.stop)
		if s.node != nil {
			// Leave at once: another replica takes the cluster-wide work
			// now, not when this one's session would have expired.
			errs = append(errs, s.node.Close())
		}
		if s.http != nil {
			errs = append(errs, s.http.Shutdown(ctx))
		} else if s.httpLn != nil {
			errs = append(errs, s.httpLn.Close())
		}
		if s.coap != nil {
			errs = append(errs, s.coap.Shutdown(ctx))
		}
		if s.dhcp != nil {
			errs = append(errs, s.dhcp.Close())
		}
		if s.broker != nil {
			errs = append(errs, s.broker.Shutdown(ctx))
		}
		if s.remote != nil {
			errs = append(errs, s.remote.Shutdown(ctx))
		}
		if s.debug != nil {
			errs = append(errs, s.debug.Close())
		}
		if s.ocsp != nil {
			errs = append(errs, s.ocsp.Close())
		}
		s.bg.Wait() // the CRL loop may be writing; it ends on s.stop
		if s.fwSrc != nil {
			s.fwSrc.close()
		}
		if s.store != nil {
			errs = append(errs, s.store.Close())
		}
		if s.lock != nil {
			errs = append(errs, s.lock.Close()) // closing releases the flock
		}
	})
	return errors.Join(errs...)
}

// importLegacyTargets moves the rollouts and pins that versions before the
// inventory kept in the catalogue's targets.json into the inventory, once:
// the file is renamed to targets.json.imported after.
func importLegacyTargets(ctx context.Context, cat *firmware.Catalogue, store *devices.Store, log *slog.Logger) error {
	rollouts, pins, path, ok, err := cat.LegacyTargets()
	if err != nil || !ok {
		return err
	}
	nr, np, err := store.ImportTargets(ctx, rollouts, pins, time.Now(), devices.AuditEvent{Actor: "system", Action: "firmware.targets.import", Target: path})
	if err != nil {
		return fmt.Errorf("move %s into the inventory: %w", path, err)
	}
	log.Info("firmware rollouts and pins moved into the inventory", "file", path, "rollouts", nr, "pins", np)
	return os.Rename(path, path+".imported")
}

// firmwareSource tells the enrollment service which image a device should
// run (enroll.FirmwareSource), from the catalogue and its targets, and
// hands images to devices over CoAP (coap.FirmwareImages).
type firmwareSource struct {
	cat   *catalogue
	store *devices.Store
	uris  func(digest string) []string // where devices download an image

	mu   sync.Mutex
	open map[string]*os.File // images are immutable: each is opened once, for ReadAt by every download
}

var (
	_ enroll.FirmwareSource = (*firmwareSource)(nil)
	_ coap.FirmwareImages   = (*firmwareSource)(nil)
)

func (f *firmwareSource) DeviceImage(ctx context.Context, id uuid.UUID, digest string) (io.ReadSeeker, error) {
	d, err := f.store.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	m, ok := f.cat.ByDigest(d.Model, digest)
	if !ok {
		return nil, coap.ErrNoImage
	}
	f.mu.Lock()
	file, ok := f.open[digest]
	f.mu.Unlock()
	if !ok {
		// Opened outside the lock: in a cluster this may fetch the image
		// from another replica first, and other downloads go on meanwhile.
		if file, err = f.cat.Image(digest); err != nil {
			return nil, err
		}
		f.mu.Lock()
		if open, ok := f.open[digest]; ok {
			file.Close()
			file = open
		} else {
			f.open[digest] = file
		}
		f.mu.Unlock()
	}
	return io.NewSectionReader(file, 0, m.Size), nil
}

// close closes the images opened for downloads.
func (f *firmwareSource) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, file := range f.open {
		file.Close()
		delete(f.open, k)
	}
}

func (f *firmwareSource) Target(ctx context.Context, d devices.Device) (*enroll.FirmwareTarget, error) {
	rollouts, err := f.store.Rollouts(ctx)
	if err != nil {
		return nil, err
	}
	v, _ := firmware.Target(d, rollouts)
	if v == "" {
		return nil, nil
	}
	s, m, err := f.cat.Get(d.Model, v)
	if errors.Is(err, firmware.ErrNotFound) && f.cat.s.clustered() {
		// Rolled out through another replica before its announcement of
		// the image reached this one: take the manifest from the store.
		if err = f.cat.importShared(ctx); err == nil {
			s, m, err = f.cat.Get(d.Model, v)
		}
	}
	if err != nil {
		return nil, err
	}
	return &enroll.FirmwareTarget{Version: m.Version, Size: m.Size, SHA256: m.SHA256,
		URIs: f.uris(m.SHA256), Manifest: s.Manifest, Signature: s.Signature}, nil
}

func (f *firmwareSource) PublicKeyPEM() []byte { return f.cat.PublicKeyPEM() }

// clusterAPI is GET /api/v1/cluster's source: nil (404) alone.
func (s *Server) clusterAPI() func(context.Context) (httpapi.ClusterStatus, error) {
	if !s.clustered() {
		return nil
	}
	return s.clusterStatus
}

// pruneAudit removes the audit events older than the retention (on its own,
// or as a cluster's elected replica), every minute.
func (s *Server) pruneAudit(ctx context.Context) {
	if s.cfg.AuditRetention <= 0 {
		return
	}
	n, err := s.store.PruneAudit(ctx, time.Now().Add(-s.cfg.AuditRetention))
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Error("prune the audit log", "err", err)
	case n > 0:
		s.log.Info("pruned audit events past the retention", "events", n, "retention", s.cfg.AuditRetention)
	}
}
