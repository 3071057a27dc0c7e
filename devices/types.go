package devices

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/pki/seal"
)

// State is a device's lifecycle state.
type State string

// Lifecycle states, in the order a device normally moves through them.
const (
	StateManufactured State = "manufactured" // imported from a factory manifest, no site
	StateClaimed      State = "claimed"      // bound to a site, not yet enrolled
	StateProvisioned  State = "provisioned"  // certificate, config and lease issued
	StateActive       State = "active"       // device reported it applied its config
	StateRevoked      State = "revoked"      // certificate revoked, every attempt refused
)

// Device is one inventory record.
type Device struct {
	ID        uuid.UUID `json:"id" cbor:"1,keyasint"`
	Serial    string    `json:"serial" cbor:"2,keyasint"`
	Model     string    `json:"model" cbor:"3,keyasint"`
	BatchID   string    `json:"batch_id,omitempty" cbor:"4,keyasint,omitempty"`
	Site      string    `json:"site,omitempty" cbor:"5,keyasint,omitempty"`
	State     State     `json:"state" cbor:"6,keyasint"`
	TokenHash []byte    `json:"token_hash" cbor:"7,keyasint"` // SHA-256 of the claim token; never the token
	// ClaimCodeHash is the hash of the label's claim-code secret; cleared by
	// the claim that uses it (single use).
	ClaimCodeHash []byte `json:"claim_code_hash,omitempty" cbor:"8,keyasint,omitempty"`
	// FactoryCA is the manufacturer CA (FactoryCA.ID) whose certificate the
	// device last enrolled with, or that registered it on first contact.
	FactoryCA string `json:"factory_ca,omitempty" cbor:"9,keyasint,omitempty"`
	// BootstrapPSK is the LwM2M bootstrap PSK minted with the device's
	// batch (it is in the device's flash), sealed; "" for a device without.
	BootstrapPSK string `json:"bootstrap_psk,omitempty" cbor:"10,keyasint,omitempty"`
	// LwM2MPSK is the PSK an LwM2M bootstrap gave the device for its
	// management server (security mode psk), sealed.
	LwM2MPSK string `json:"lwm2m_psk,omitempty" cbor:"11,keyasint,omitempty"`
	// Rebootstrap lets the device's next LwM2M bootstrap through although it
	// is provisioned (an operator's trigger); the bootstrap clears it.
	Rebootstrap bool `json:"rebootstrap,omitempty" cbor:"12,keyasint,omitempty"`
	// WiFiPSK is the device's own Wi-Fi passphrase, sealed: given at its
	// enrollment in a site with per-device PSKs; "" for the others.
	WiFiPSK         string `json:"wifi_psk,omitempty" cbor:"13,keyasint,omitempty"`
	FirmwareVersion string `json:"firmware_version,omitempty" cbor:"14,keyasint,omitempty"`
	// FirmwarePin targets the device to this version whatever the rollouts
	// say ("" follows them); it stays with the device through a re-key.
	FirmwarePin string `json:"firmware_pin,omitempty" cbor:"15,keyasint,omitempty"`
	MAC         string `json:"mac,omitempty" cbor:"16,keyasint,omitempty"`
	// Issued identity: the current certificate and the key it certifies.
	CertSerial    string    `json:"cert_serial,omitempty" cbor:"17,keyasint,omitempty"` // hex
	CertDER       []byte    `json:"cert_der,omitempty" cbor:"18,keyasint,omitempty"`
	PublicKeyHash []byte    `json:"public_key_hash,omitempty" cbor:"19,keyasint,omitempty"` // SHA-256 of SubjectPublicKeyInfo
	CertNotAfter  time.Time `json:"cert_not_after,omitzero" cbor:"20,keyasint,omitzero"`
	// The certificate a renewal replaced, still accepted at handshakes for the
	// retry window after RenewedAt (a device that lost the renewal answer).
	PrevCertSerial string          `json:"prev_cert_serial,omitempty" cbor:"21,keyasint,omitempty"`
	RenewedAt      time.Time       `json:"renewed_at,omitzero" cbor:"22,keyasint,omitzero"`
	Lease          *Lease          `json:"lease,omitempty" cbor:"23,keyasint,omitempty"`
	ConfigVersion  uint64          `json:"config_version,omitempty" cbor:"24,keyasint,omitempty"` // desired
	Override       *ConfigOverride `json:"override,omitempty" cbor:"25,keyasint,omitempty"`       // per-device changes to the site profile
	// What the device last reported about itself (operational channel).
	AppliedConfigVersion uint64    `json:"applied_config_version,omitempty" cbor:"26,keyasint,omitempty"`
	Health               string    `json:"health,omitempty" cbor:"27,keyasint,omitempty"`
	LastSeen             time.Time `json:"last_seen,omitzero" cbor:"28,keyasint,omitzero"`
	ProvisionedAt        time.Time `json:"provisioned_at,omitzero" cbor:"29,keyasint,omitzero"`
	CreatedAt            time.Time `json:"created_at" cbor:"30,keyasint"`
	UpdatedAt            time.Time `json:"updated_at" cbor:"31,keyasint"`
	// Rev increases with every write; Provision uses it to detect concurrent change.
	Rev uint64 `json:"rev" cbor:"32,keyasint"`
}

// Lease is an IPv4 address held by a device until Expires.
//
// Inside a device record, its Site and DeviceID are left out when they are
// the device's own (encodeDevice), as they nearly always are.
type Lease struct {
	Site     string     `json:"site" cbor:"1,keyasint,omitempty"`
	Addr     netip.Addr `json:"addr" cbor:"2,keyasint"`
	DeviceID uuid.UUID  `json:"device_id" cbor:"3,keyasint,omitzero"`
	Expires  time.Time  `json:"expires" cbor:"4,keyasint"`
}

// Security is a Wi-Fi security mode.
type Security string

// Supported Wi-Fi security modes.
const (
	SecurityWPA2PSK Security = "wpa2-psk"
	SecurityWPA3SAE Security = "wpa3-sae"
	// The enterprise modes: 802.1X with EAP-TLS and the device's
	// certificate from provisiond's CA; no passphrase (docs/network.md).
	SecurityWPA2Enterprise Security = "wpa2-enterprise"
	SecurityWPA3Enterprise Security = "wpa3-enterprise"
)

// Valid says whether s is a supported mode.
func (s Security) Valid() bool {
	switch s {
	case SecurityWPA2PSK, SecurityWPA3SAE, SecurityWPA2Enterprise, SecurityWPA3Enterprise:
		return true
	}
	return false
}

// Enterprise says whether devices authenticate with EAP-TLS (no passphrase).
func (s Security) Enterprise() bool {
	return s == SecurityWPA2Enterprise || s == SecurityWPA3Enterprise
}

const securityModes = `"wpa2-psk", "wpa3-sae", "wpa2-enterprise" or "wpa3-enterprise"`

// Site is a place devices are installed: its Wi-Fi and network profile and its
// IPv4 address pool.
type Site struct {
	Name       string        `json:"name"`
	SSID       string        `json:"ssid"`
	Security   Security      `json:"security"`
	Passphrase string        `json:"passphrase"`
	CIDR       netip.Prefix  `json:"cidr"`
	Gateway    netip.Addr    `json:"gateway"`
	DNS        []netip.Addr  `json:"dns,omitempty"`
	NTP        []string      `json:"ntp,omitempty"`
	LeaseTTL   time.Duration `json:"lease_ttl"`
	Reenroll   Reenroll      `json:"reenroll,omitempty"` // default keep-identity
	// RADIUSServerName is the name in the RADIUS server's certificate that
	// devices of an enterprise site check (EAP-TLS server name); empty:
	// they check only that provisiond's CA issued it.
	RADIUSServerName string `json:"radius_server_name,omitempty"`
	// NAS are the site's access points (or their controller) that take
	// RADIUS Disconnect-Requests (RFC 5176): a revoked device's live
	// session is ended at once. Secrets are sealed at rest.
	NAS []NAS `json:"nas,omitempty"`
	// PerDevicePSK gives each device of a wpa2-psk site a passphrase of
	// its own (identity PSK), generated at its enrollment, delivered in its
	// config and served to the site's RADIUS server by MAC
	// (docs/network.md). The site's passphrase stays the one of devices
	// enrolled before it was set.
	PerDevicePSK bool `json:"per_device_psk,omitempty"`
	// LwM2M is what the site's devices are told at an LwM2M bootstrap; nil:
	// the site serves none.
	LwM2M     *LwM2MProfile `json:"lwm2m,omitempty"`
	Version   uint64        `json:"version"`
	CreatedAt time.Time     `json:"created_at"`
	UpdatedAt time.Time     `json:"updated_at"`
}

// NAS is a network access server that takes Disconnect-Requests.
type NAS struct {
	Address string `json:"address"` // host:port, port 3799 by default
	Secret  string `json:"secret"`  // the RADIUS shared secret (sealed)
}

// ConfigOverride changes a device's config away from its site profile; set
// fields replace the site's.
type ConfigOverride struct {
	SSID       string       `json:"ssid,omitempty"`
	Security   Security     `json:"security,omitempty"`
	Passphrase string       `json:"passphrase,omitempty"`
	DNS        []netip.Addr `json:"dns,omitempty"`
	NTP        []string     `json:"ntp,omitempty"`
}

// Validate checks the override's fields (those that are set).
func (o *ConfigOverride) Validate() error {
	switch {
	case len(o.SSID) > 32:
		return fmt.Errorf("%w: override.ssid: at most 32 bytes", ErrInvalid)
	case o.Security != "" && !o.Security.Valid():
		return fmt.Errorf("%w: override.security: %s", ErrInvalid, securityModes)
	case o.Security.Enterprise() && o.Passphrase != "":
		return fmt.Errorf("%w: override.passphrase: an enterprise mode has none (devices use their certificate)", ErrInvalid)
	case o.Passphrase != "" && (len(o.Passphrase) < 8 || len(o.Passphrase) > 63):
		return fmt.Errorf("%w: override.passphrase: 8-63 characters", ErrInvalid)
	}
	for _, d := range o.DNS {
		if !d.IsValid() {
			return fmt.Errorf("%w: override.dns: invalid address", ErrInvalid)
		}
	}
	for _, n := range o.NTP {
		if n == "" || len(n) > 253 {
			return fmt.Errorf("%w: override.ntp: 1-253 characters", ErrInvalid)
		}
	}
	return nil
}

// Reenroll is a site's policy for a device re-opened after revocation.
type Reenroll string

// Re-enrollment policies.
const (
	KeepIdentity Reenroll = "keep-identity" // the device keeps its UUID
	NewIdentity  Reenroll = "new-identity"  // the device gets a new UUID (its certificates and history stay with the serial)
)

// Batch is a set of devices registered together from a factory run.
type Batch struct {
	ID        string    `json:"id"`
	Model     string    `json:"model,omitempty"`
	Site      string    `json:"site,omitempty"`
	Source    string    `json:"source"` // "mint" or the imported file's name
	Count     int       `json:"count"`
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
}

// Role is what an API token may do.
type Role string

// Token roles, from most to least powerful: an admin manages tokens, sites
// and certificates; an operator runs the fleet (factory batches, site
// changes); an installer claims devices for its sites; a viewer reads.
// Beside them, a radius token is a RADIUS server's: it may only ask for the
// Wi-Fi passphrase of a device by its MAC (per-device PSKs), and nothing
// else, not even read.
const (
	RoleAdmin     Role = "admin"
	RoleOperator  Role = "operator"
	RoleInstaller Role = "installer"
	RoleViewer    Role = "viewer"
	RoleRADIUS    Role = "radius"
)

// Token is an API bearer token, stored under the SHA-256 of its secret.
// Sites, when not empty, limits it to those sites' devices and profiles.
type Token struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Sites     []string  `json:"sites,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// ValidRole reports whether r is one of the roles.
func ValidRole(r Role) bool {
	switch r {
	case RoleAdmin, RoleOperator, RoleInstaller, RoleViewer, RoleRADIUS:
		return true
	}
	return false
}

// AuditEvent records one change: who did what to which target, when and from where.
type AuditEvent struct {
	// ID is the event's place in the log (a cursor for paging), set when
	// the event is read; it is not part of the record or of its hash.
	ID string `json:"id,omitempty" cbor:"-"`
	// Chain and Seq place the event in its hash chain (see AuditChains).
	Chain  uint16            `json:"chain,omitempty" cbor:"1,keyasint,omitempty"`
	Seq    uint64            `json:"seq" cbor:"2,keyasint"`
	Time   time.Time         `json:"time" cbor:"3,keyasint"`
	Actor  string            `json:"actor" cbor:"4,keyasint"`  // "device:<serial>", "token:<id>", "system"
	Action string            `json:"action" cbor:"5,keyasint"` // e.g. "site.create", "device.enroll"
	Target string            `json:"target" cbor:"6,keyasint"` // what it acted on
	Source string            `json:"source,omitempty" cbor:"7,keyasint,omitempty"`
	Detail map[string]string `json:"detail,omitempty" cbor:"8,keyasint,omitempty"`
	// The hash chain: Hash is SHA-256 over PrevHash and this event's JSON
	// (with Hash empty, whatever encoding stores it); PrevHash is the
	// previous event's Hash.
	PrevHash string `json:"prev_hash" cbor:"9,keyasint"`
	Hash     string `json:"hash" cbor:"10,keyasint"`
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	serialRE = nameRE
)

// ValidName reports whether s can name a site or a model: 1-64 characters of
// letters, digits, '.', '_' and '-', starting with a letter or digit. Such
// names are safe as file names and URL path segments.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ValidSerial reports whether s is an acceptable device serial (same rule as ValidName).
func ValidSerial(s string) bool { return serialRE.MatchString(s) }

// Validate checks a site profile and fills defaults; errors name the field.
func (s *Site) Validate() error {
	switch {
	case !ValidName(s.Name):
		return fmt.Errorf("%w: name: must be 1-64 of [A-Za-z0-9._-], starting alphanumeric", ErrInvalid)
	case s.SSID == "" || len(s.SSID) > 32:
		return fmt.Errorf("%w: ssid: must be 1-32 bytes", ErrInvalid)
	case !s.Security.Valid():
		return fmt.Errorf("%w: security: must be %s", ErrInvalid, securityModes)
	case s.Security.Enterprise() && s.Passphrase != "":
		return fmt.Errorf("%w: passphrase: an enterprise site has none: devices authenticate with their certificate (EAP-TLS)", ErrInvalid)
	case len(s.RADIUSServerName) > 253:
		return fmt.Errorf("%w: radius_server_name: at most 253 bytes", ErrInvalid)
	case s.PerDevicePSK && s.Security != SecurityWPA2PSK:
		return fmt.Errorf("%w: per_device_psk: only for security %q (access points take a per-device key by MAC for WPA2-PSK only)", ErrInvalid, SecurityWPA2PSK)
	case len(s.NAS) > 64:
		return fmt.Errorf("%w: nas: at most 64", ErrInvalid)
	case !s.Security.Enterprise() && !strings.HasPrefix(s.Passphrase, seal.Prefix) && (len(s.Passphrase) < 8 || len(s.Passphrase) > 63):
		// A sealed passphrase was checked in clear before it was sealed.
		return fmt.Errorf("%w: passphrase: must be 8-63 characters", ErrInvalid)
	case !s.CIDR.IsValid() || !s.CIDR.Addr().Is4():
		return fmt.Errorf("%w: cidr: must be an IPv4 prefix such as 10.20.0.0/24", ErrInvalid)
	case s.CIDR.Bits() < 8 || s.CIDR.Bits() > 30:
		return fmt.Errorf("%w: cidr: prefix length must be between /8 and /30", ErrInvalid)
	case s.CIDR.Masked() != s.CIDR:
		return fmt.Errorf("%w: cidr: %s has host bits set (did you mean %s?)", ErrInvalid, s.CIDR, s.CIDR.Masked())
	}
	for i, n := range s.NAS {
		host, port, err := net.SplitHostPort(n.Address)
		if err != nil {
			host, port = n.Address, "3799"
		}
		if _, err := netip.ParseAddr(host); err != nil || port == "" {
			return fmt.Errorf("%w: nas[%d].address: %q is not an IP address with an optional :port", ErrInvalid, i, n.Address)
		}
		if n.Secret == "" || (!strings.HasPrefix(n.Secret, seal.Prefix) && len(n.Secret) > 128) {
			return fmt.Errorf("%w: nas[%d].secret: 1-128 characters", ErrInvalid, i)
		}
		s.NAS[i].Address = net.JoinHostPort(host, port)
	}
	if !s.Gateway.IsValid() {
		s.Gateway = s.CIDR.Addr().Next() // first host by convention
	}
	if !s.CIDR.Contains(s.Gateway) || s.Gateway == s.CIDR.Addr() || s.Gateway == lastAddr(s.CIDR) {
		return fmt.Errorf("%w: gateway: %s is not a host address of %s", ErrInvalid, s.Gateway, s.CIDR)
	}
	for _, d := range s.DNS {
		if !d.IsValid() {
			return fmt.Errorf("%w: dns: invalid address", ErrInvalid)
		}
	}
	for _, n := range s.NTP {
		if n == "" || len(n) > 253 {
			return fmt.Errorf("%w: ntp: server names must be 1-253 characters", ErrInvalid)
		}
	}
	if s.LeaseTTL == 0 {
		s.LeaseTTL = 24 * time.Hour
	}
	if s.Reenroll == "" {
		s.Reenroll = KeepIdentity
	}
	if s.Reenroll != KeepIdentity && s.Reenroll != NewIdentity {
		return fmt.Errorf("%w: reenroll: %q or %q", ErrInvalid, KeepIdentity, NewIdentity)
	}
	if s.LeaseTTL < time.Minute || s.LeaseTTL > 365*24*time.Hour {
		return fmt.Errorf("%w: lease: must be between 1m and 8760h", ErrInvalid)
	}
	if s.LwM2M != nil {
		return s.LwM2M.Validate()
	}
	return nil
}

// LwM2MSecurity is how a site's devices authenticate to its LwM2M
// management server.
type LwM2MSecurity string

// LwM2M security modes a bootstrap provisions.
const (
	LwM2MCertificate LwM2MSecurity = "certificate" // a certificate from provisiond's CA (mode 2)
	LwM2MEST         LwM2MSecurity = "est"         // the device enrolls with EST-coaps after Finish (mode 4)
	LwM2MPSK         LwM2MSecurity = "psk"         // a fresh per-device PSK, sealed at rest (mode 0)
)

// LwM2MProfile is a site's LwM2M bootstrap profile: the management server
// its devices register with, and how.
type LwM2MProfile struct {
	ServerURI     string        `json:"server_uri"`      // coaps://host[:port]
	ShortServerID uint16        `json:"short_server_id"` // 1-65534; default 1
	Lifetime      int64         `json:"lifetime"`        // registration lifetime, seconds; default 86400
	Binding       string        `json:"binding"`         // default "U"
	SecurityMode  LwM2MSecurity `json:"security_mode"`   // default certificate
	WiFi          bool          `json:"wifi,omitempty"`  // also write the site's Wi-Fi (WLAN object 12)
}

// Validate checks the profile and fills its defaults.
func (p *LwM2MProfile) Validate() error {
	u, err := url.Parse(p.ServerURI)
	switch {
	case err != nil || u.Scheme != "coaps" || u.Hostname() == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "":
		return fmt.Errorf("%w: lwm2m.server_uri: want coaps://host[:port]", ErrInvalid)
	case p.ShortServerID == 65535:
		return fmt.Errorf("%w: lwm2m.short_server_id: 1-65534", ErrInvalid)
	case p.Lifetime < 0 || p.Lifetime > 365*24*3600:
		return fmt.Errorf("%w: lwm2m.lifetime: 0 (default 86400) to 31536000 seconds", ErrInvalid)
	}
	if p.ShortServerID == 0 {
		p.ShortServerID = 1
	}
	if p.Lifetime == 0 {
		p.Lifetime = 86400
	}
	if p.Binding == "" {
		p.Binding = "U"
	}
	seen := map[rune]bool{}
	for _, c := range p.Binding {
		if !strings.ContainsRune("UTSNQ", c) || seen[c] {
			return fmt.Errorf("%w: lwm2m.binding: letters of U, T, S, N, Q, each once", ErrInvalid)
		}
		seen[c] = true
	}
	switch p.SecurityMode {
	case "":
		p.SecurityMode = LwM2MCertificate
	case LwM2MCertificate, LwM2MEST, LwM2MPSK:
	default:
		return fmt.Errorf("%w: lwm2m.security_mode: %q, %q or %q", ErrInvalid, LwM2MCertificate, LwM2MEST, LwM2MPSK)
	}
	return nil
}

// PoolSize is the number of addresses a site can lease: the prefix less the
// network, broadcast and gateway addresses.
func (s *Site) PoolSize() int {
	return 1<<(32-s.CIDR.Bits()) - 3
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// Throttle is a key's failed attempts (a serial's claim tokens, a source
// address, an installer's claim codes), kept in the inventory when replicas
// share it.
type Throttle struct {
	Fails   int       `json:"fails"`
	Last    time.Time `json:"last"`
	Blocked time.Time `json:"blocked"` // blocked until
}
