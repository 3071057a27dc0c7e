package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffyaml"
	"gopkg.in/yaml.v2"

	"github.com/provisiond/provisiond/internal/server"
)

// The configuration comes from four places, each overriding the ones after
// it: command-line flags, PROVISIOND_* environment variables (the flag's
// name in upper case, dashes as underscores), the YAML file given with
// --config, and the defaults (server.Defaults, enroll.DefaultConfig). Every
// setting has one name in all of them; docs/operations.md lists them.

// options are the settings that are not fields of server.Config.
type options struct {
	configFile  string
	printConfig bool
	logLevel    string
	logFormat   string
	gcHeadroom  byteSize
}

// defaultGCHeadroom is --gc-headroom's default: the heap may grow by this
// much between collections however little is live (internal/gcheadroom).
const defaultGCHeadroom = 64 << 20

// byteSize is a flag of bytes: a number with an optional KiB, MiB or GiB
// (or KB, MB, GB: powers of ten).
type byteSize uint64

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}

func (b *byteSize) Set(v string) error {
	num, mult := strings.TrimSpace(v), uint64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 64)
	if err != nil || (mult > 1 && n > (1<<63)/mult) {
		return fmt.Errorf("%q: want a size such as 128MiB, 1GiB or 0", v)
	}
	*b = byteSize(n * mult)
	return nil
}

func (b *byteSize) String() string {
	for _, u := range sizeUnits[:3] { // the largest binary unit that divides it
		if n := uint64(*b); n > 0 && n%u.mult == 0 {
			return strconv.FormatUint(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(uint64(*b), 10)
}

// secretFlags are never printed.
var secretFlags = map[string]bool{"ca-passphrase": true, "etcd-password": true}

// newFlags declares every setting on a flag set, each bound to its field and
// defaulting to what cfg holds.
func newFlags(cfg *server.Config, o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("provisiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.configFile, "config", "", "YAML file of settings (keys are these flags' names); flags and PROVISIOND_* variables override it")
	fs.BoolVar(&o.printConfig, "print-config", false, "print the effective settings as a config file (secrets left out) and exit")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.Var(&o.gcHeadroom, "gc-headroom", "let the heap grow by at least this much between garbage collections, however little is live (e.g. 64MiB; 0: Go's GOGC alone, as when GOGC is set)")

	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "data directory: inventory, CA, admin token")
	fs.StringVar(&cfg.CoAPSAddr, "coaps-addr", cfg.CoAPSAddr, "CoAP over DTLS listen address (empty disables)")
	fs.StringVar(&cfg.CoAPAddr, "coap-addr", cfg.CoAPAddr, "plain CoAP listen address; needs --insecure-coap (default :5683 with it)")
	fs.BoolVar(&cfg.InsecureCoAP, "insecure-coap", cfg.InsecureCoAP, "also serve plain CoAP (development only)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTPS ops API listen address")
	fs.StringVar(&cfg.MQTTAddr, "mqtt-addr", cfg.MQTTAddr, "embedded MQTT broker, MQTT over TLS (empty disables)")
	fs.StringVar(&cfg.MQTTPlainAddr, "mqtt-plain-addr", cfg.MQTTPlainAddr, "embedded broker, plain MQTT; needs --insecure-mqtt (default :1883 with it)")
	fs.BoolVar(&cfg.InsecureMQTT, "insecure-mqtt", cfg.InsecureMQTT, "also serve plain MQTT (development only)")
	fs.StringVar(&cfg.MQTTBroker, "mqtt-broker", cfg.MQTTBroker, "use this external broker (mqtts://host:port) instead of the embedded one")
	fs.StringVar(&cfg.MQTTBootstrap, "mqtt-bootstrap-url", cfg.MQTTBootstrap, "with --mqtt-broker: the URL devices bootstrap on, if not the same (goes into flash bundles)")
	fs.StringVar(&cfg.MQTTCAFile, "mqtt-ca-file", cfg.MQTTCAFile, "PEM roots for the external broker's certificate (default: provisiond's root)")
	fs.StringVar(&cfg.MQTTClientID, "mqtt-client-id", cfg.MQTTClientID, "this replica's client ID on the external broker (default provisiond-<hostname>)")
	fs.StringVar(&cfg.AdvertiseHost, "advertise-host", cfg.AdvertiseHost, "host name or IP devices use to reach this server")
	fs.Func("server-names", "extra comma-separated DNS names/IPs in the server certificate", func(v string) error {
		cfg.ServerNames = commaList(v)
		return nil
	})
	fs.StringVar(&cfg.CAPassphrase, "ca-passphrase", cfg.CAPassphrase, "CA key passphrase; give it as PROVISIOND_CA_PASSPHRASE (a flag shows in ps). Empty: a generated one kept in the data directory")
	fs.DurationVar(&cfg.CertLifetime, "cert-lifetime", cfg.CertLifetime, "device certificate lifetime")
	fs.StringVar(&cfg.CertTemplate, "cert-template", cfg.CertTemplate, "x509util template file for device certificates (default built in)")
	fs.IntVar(&cfg.MaxHandshakes, "max-handshakes", cfg.MaxHandshakes, "DTLS, MQTT TLS and HTTPS handshakes worked on at once, per listener; more wait up to 5s for a slot, then are dropped")
	fs.DurationVar(&cfg.HandshakeWait, "handshake-wait", cfg.HandshakeWait, "how long a new DTLS, MQTT TLS or HTTPS session waits for a handshake slot before it is dropped")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", cfg.HandshakeTimeout, "the longest one DTLS or TLS handshake may take")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "close a DTLS session idle this long")
	fs.DurationVar(&cfg.StoreBatchWait, "store-batch-wait", cfg.StoreBatchWait, "how long enrollment commits wait to share one fsync (bbolt)")
	fs.DurationVar(&cfg.AuditRetention, "audit-retention", cfg.AuditRetention, "keep audit events this long, then prune them (each chain keeps an anchor, so the rest verifies); 0 keeps them forever. Export before: provctl audit export")
	fs.StringVar(&cfg.Store, "store", cfg.Store, "where the inventory lives: empty for the bbolt file in the data directory, or etcd://host:port[,host:port...][/prefix] (etcds:// with TLS) for a cluster of replicas")
	etcdFlags(fs, &cfg.Etcd)
	fs.IntVar(&cfg.Fleet.JobChunk, "job-chunk", cfg.Fleet.JobChunk, "devices per transaction of a bulk job (revocation, reconfiguration, retarget); 0: as many as the store takes in one")
	fs.StringVar(&cfg.LwM2MEndpoint, "lwm2m-endpoint", cfg.LwM2MEndpoint, "LwM2M endpoint names (and bootstrap PSK identities) of devices: a pattern with {serial}, e.g. urn:dev:ops:acme-{serial}; default the serial")
	fs.StringVar(&cfg.LwM2MAddr, "lwm2m-addr", cfg.LwM2MAddr, "a second DTLS listen address serving the same resources, for LwM2M clients that expect the bootstrap server on a port of its own (e.g. :5784); empty: the CoAPS listener alone")
	fs.StringVar(&cfg.OCSPAddr, "ocsp-addr", cfg.OCSPAddr, "also serve OCSP (POST /ocsp, GET /ocsp/...) and the CRL (GET /crl) over plain HTTP here, for RADIUS servers (docs/network.md); answers are signed")
	fs.StringVar(&cfg.DHCPInterface, "dhcp-interface", cfg.DHCPInterface, "serve the inventory's leases over DHCPv4 on this interface (a site's LAN); empty: no DHCP unless --dhcp-addr")
	fs.StringVar(&cfg.DHCPAddr, "dhcp-addr", cfg.DHCPAddr, "DHCPv4 listen address for relayed requests (giaddr selects the site), e.g. 10.0.0.5:67; default :67 with --dhcp-interface")
	fs.StringVar(&cfg.DHCPServerIP, "dhcp-server-ip", cfg.DHCPServerIP, "the DHCP server identifier (an IPv4 address of this host the clients or relays reach); default: --dhcp-interface's address")
	fs.DurationVar(&cfg.LwM2MTimeout, "lwm2m-timeout", cfg.LwM2MTimeout, "the longest an LwM2M bootstrap may take after its Bootstrap-Request (default 60s); a client silent for longer is given up, nothing recorded")
	fs.StringVar(&cfg.DebugAddr, "debug-addr", cfg.DebugAddr, "serve net/http/pprof here, e.g. 127.0.0.1:6060 (no authentication: keep it on loopback)")

	e := &cfg.Enroll
	fs.DurationVar(&e.RetryWindow, "retry-window", e.RetryWindow, "a device re-sending the same key within this gets the same answer")
	fs.DurationVar(&e.NotClaimedRetry, "not-claimed-retry", e.NotClaimedRetry, "retry hint (Max-Age) to a device no installer has claimed yet")
	fs.DurationVar(&e.PoolRetry, "pool-retry", e.PoolRetry, "retry hint to a device whose site's address pool is full")
	fs.IntVar(&e.MaxFailures, "max-failures", e.MaxFailures, "failed claims per serial (4x per source address) before throttling")
	fs.DurationVar(&e.FailureWindow, "failure-window", e.FailureWindow, "failed claims older than this are forgotten")
	fs.DurationVar(&e.ThrottleBase, "throttle-base", e.ThrottleBase, "first block after too many failures; doubles with each further failure")
	fs.DurationVar(&e.ThrottleMax, "throttle-max", e.ThrottleMax, "longest block")
	fs.BoolVar(&e.AllowP384, "allow-p384", e.AllowP384, "also certify ECDSA P-384 keys")
	fs.BoolVar(&e.AllowEd25519, "allow-ed25519", e.AllowEd25519, "also certify Ed25519 keys")
	fs.IntVar(&e.MaxCSRBytes, "max-csr-bytes", e.MaxCSRBytes, "largest CSR accepted")
	fs.IntVar(&e.MaxFieldBytes, "max-field-bytes", e.MaxFieldBytes, "longest model and firmware_version accepted")
	fs.IntVar(&e.MaxInFlight, "max-inflight", e.MaxInFlight, "enrollments processed at once; more are answered 5.03 with a retry hint; negative: no bound")
	fs.Func("lb-addrs", "comma-separated addresses or CIDRs of load balancers in front (every device behind one shares its address): not throttled per source", func(v string) error {
		e.LBAddrs = nil
		for _, a := range commaList(v) {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				addr, aerr := netip.ParseAddr(a)
				if aerr != nil {
					return fmt.Errorf("%q is neither an address nor a CIDR", a)
				}
				p = netip.PrefixFrom(addr, addr.BitLen())
			}
			e.LBAddrs = append(e.LBAddrs, p.Masked())
		}
		return nil
	})
	fs.DurationVar(&e.OverloadRetry, "overload-retry", e.OverloadRetry, "retry hint when overloaded (jittered up to 2x)")
	return fs
}

// loadConfig parses args, the environment and the config file into the
// server's configuration, and checks it.
func loadConfig(args []string, stdout, stderr io.Writer) (server.Config, options, error) {
	cfg := server.Defaults()
	o := options{gcHeadroom: defaultGCHeadroom}
	fs := newFlags(&cfg, &o, stderr)
	err := ff.Parse(fs, args,
		ff.WithEnvVarPrefix("PROVISIOND"),
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(ffyaml.Parser))
	if err != nil {
		return cfg, o, err
	}
	if fs.NArg() > 0 {
		return cfg, o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if cfg.InsecureCoAP && cfg.CoAPAddr == "" {
		cfg.CoAPAddr = ":5683"
	}
	if cfg.InsecureMQTT && cfg.MQTTPlainAddr == "" && cfg.MQTTBroker == "" {
		cfg.MQTTPlainAddr = ":1883"
	}
	switch {
	case cfg.MaxHandshakes < 1:
		return cfg, o, fmt.Errorf("max-handshakes: %d: at least 1", cfg.MaxHandshakes)
	case cfg.Fleet.JobChunk < 0:
		return cfg, o, fmt.Errorf("job-chunk: %d: 0 (the store's choice) or more devices", cfg.Fleet.JobChunk)
	case cfg.HandshakeWait <= 0 || cfg.HandshakeTimeout <= 0 || cfg.IdleTimeout <= 0:
		return cfg, o, fmt.Errorf("handshake-wait, handshake-timeout, idle-timeout: each must be positive (%s, %s, %s)", cfg.HandshakeWait, cfg.HandshakeTimeout, cfg.IdleTimeout)
	case cfg.AuditRetention < 0 || (cfg.AuditRetention > 0 && cfg.AuditRetention < 24*time.Hour):
		return cfg, o, fmt.Errorf("audit-retention: %s: 0 (forever) or at least 24h", cfg.AuditRetention)
	case cfg.StoreBatchWait < 0 || cfg.StoreBatchWait > time.Second:
		return cfg, o, fmt.Errorf("store-batch-wait: %s: between 0 and 1s", cfg.StoreBatchWait)
	}
	for _, n := range cfg.ServerNames {
		if _, err := netip.ParseAddr(n); err != nil && !validHostName(n) {
			return cfg, o, fmt.Errorf("server-names: %q is neither an IP address nor a host name", n)
		}
	}
	if err := cfg.Enroll.Validate(); err != nil {
		return cfg, o, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, o, err
	}
	if o.printConfig {
		// Flags print as their final values, so the file reproduces them.
		fs = newFlags(&cfg, &options{configFile: o.configFile, logLevel: o.logLevel, logFormat: o.logFormat, gcHeadroom: o.gcHeadroom}, stderr)
		return cfg, o, printConfig(stdout, fs, cfg)
	}
	return cfg, o, nil
}

// printConfig writes the effective settings as a config file.
func printConfig(w io.Writer, fs *flag.FlagSet, cfg server.Config) error {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "config" && f.Name != "print-config" {
			names = append(names, f.Name)
		}
	})
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("# provisiond settings (provisiond --print-config); secrets are left out\n")
	for _, n := range names {
		v := fs.Lookup(n).Value.String()
		switch n { // func flags print nothing of their own
		case "server-names":
			v = strings.Join(cfg.ServerNames, ",")
		case "lb-addrs":
			var ps []string
			for _, p := range cfg.Enroll.LBAddrs {
				ps = append(ps, p.String())
			}
			v = strings.Join(ps, ",")
		}
		if secretFlags[n] {
			if v != "" {
				fmt.Fprintf(&b, "# %s: (set, not shown)\n", n)
			}
			continue
		}
		if _, isBool := fs.Lookup(n).Value.(interface{ IsBoolFlag() bool }); isBool || isNumber(v) {
			fmt.Fprintf(&b, "%s: %s\n", n, v) // YAML reads these back as the flag's own text
			continue
		}
		raw, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s: %s", n, raw)
	}
	_, err := io.WriteString(w, b.String())
	if err == nil {
		err = errPrinted
	}
	return err
}

// errPrinted ends run after --print-config, without an error.
var errPrinted = errors.New("printed the configuration")

func isNumber(v string) bool {
	_, err := strconv.ParseInt(v, 10, 64)
	return err == nil
}

func validHostName(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// etcdFlags declares how to reach etcd (provisiond and provisiond migrate).
func etcdFlags(fs *flag.FlagSet, ec *server.EtcdConfig) {
	fs.StringVar(&ec.CAFile, "etcd-ca", ec.CAFile, "PEM file with the roots of etcd's server certificates (etcds://)")
	fs.StringVar(&ec.CertFile, "etcd-cert", ec.CertFile, "client certificate for etcd (PEM), when etcd asks for one")
	fs.StringVar(&ec.KeyFile, "etcd-key", ec.KeyFile, "the client certificate's key (PEM)")
	fs.StringVar(&ec.Username, "etcd-username", ec.Username, "etcd user, when etcd authentication is on")
	fs.StringVar(&ec.Password, "etcd-password", ec.Password, "etcd user's password; give it as PROVISIOND_ETCD_PASSWORD (a flag shows in ps)")
}

// commaList splits a comma-separated setting, dropping empty entries.
func commaList(v string) []string {
	var out []string
	for _, x := range strings.Split(v, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
