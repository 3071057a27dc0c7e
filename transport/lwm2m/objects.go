package lwm2m

// Object IDs provisiond writes as a bootstrap server.
const (
	ObjSecurity = 0
	ObjServer   = 1
	ObjWLAN     = 12
)

// SecurityMode is resource /0/x/2.
type SecurityMode int64

// Security modes (OMA-TS-LightweightM2M_Core, Security object, resource 2).
const (
	ModePSK         SecurityMode = 0
	ModeRPK         SecurityMode = 1
	ModeCertificate SecurityMode = 2
	ModeNoSec       SecurityMode = 3
	ModeEST         SecurityMode = 4 // certificate mode with EST (LwM2M 1.1)
)

// Resource is one resource of an instance and its value.
type Resource struct {
	ID    uint16
	Value Value
}

// Instance is an object instance as a bootstrap server writes it.
type Instance struct {
	Object, ID uint16
	Resources  []Resource
}

// TLV is the instance as one OMA-TLV object instance entry.
func (in Instance) TLV() []byte {
	children := make([]TLV, len(in.Resources))
	for i, r := range in.Resources {
		children[i] = TLV{Type: TLVResource, ID: r.ID, Value: r.Value.tlvValue()}
	}
	return EncodeTLV(nil, TLV{Type: TLVObjectInstance, ID: in.ID, Children: children})
}

// Entries is the instance as SenML entries, one per resource.
func (in Instance) Entries() []Entry {
	out := make([]Entry, len(in.Resources))
	for i, r := range in.Resources {
		out[i] = Entry{Path: NewPath(in.Object, in.ID, r.ID), Value: r.Value}
	}
	return out
}

// Security is an instance of the LwM2M Security object (/0): how to reach
// and authenticate to one server.
type Security struct {
	ServerURI           string       // 0
	Bootstrap           bool         // 1: this is the bootstrap server's
	Mode                SecurityMode // 2
	PublicKeyOrIdentity []byte       // 3: PSK identity, or the client's certificate (DER)
	ServerPublicKey     []byte       // 4: the server's certificate or CA (DER)
	SecretKey           []byte       // 5: the PSK, or the client's private key (DER)
	ShortServerID       uint16       // 10: for a management server
}

// Instance is the Security object instance id.
func (s Security) Instance(id uint16) Instance {
	rs := []Resource{
		{0, Str(s.ServerURI)},
		{1, Bool(s.Bootstrap)},
		{2, Int(int64(s.Mode))},
		{3, Bytes(s.PublicKeyOrIdentity)},
		{4, Bytes(s.ServerPublicKey)},
		{5, Bytes(s.SecretKey)},
	}
	if !s.Bootstrap {
		rs = append(rs, Resource{10, Int(int64(s.ShortServerID))})
	}
	return Instance{Object: ObjSecurity, ID: id, Resources: rs}
}

// Server is an instance of the LwM2M Server object (/1): a management
// server's registration parameters.
type Server struct {
	ShortServerID       uint16 // 0
	Lifetime            int64  // 1, seconds
	NotificationStoring bool   // 6
	Binding             string // 7, e.g. "U"
}

// Instance is the Server object instance id.
func (s Server) Instance(id uint16) Instance {
	return Instance{Object: ObjServer, ID: id, Resources: []Resource{
		{0, Int(int64(s.ShortServerID))},
		{1, Int(s.Lifetime)},
		{6, Bool(s.NotificationStoring)},
		{7, Str(s.Binding)},
	}}
}

// WLAN is an instance of the OMA WLAN connectivity object (/12) as a
// client joins a network.
type WLAN struct {
	InterfaceName string // 0
	Enable        bool   // 1
	SSID          string // 5
	// AuthenticationMode (15): 0 none, 1 PSK, 2 EAP.
	AuthenticationMode int64
	// EncryptionMode (16): 0 AES (WPA2), 1 TKIP (WPA).
	EncryptionMode int64
	KeyPhrase      string // 18: WPA key phrase (write-only)
}

// Instance is the WLAN object instance id. Mode (8) is client (1).
func (w WLAN) Instance(id uint16) Instance {
	rs := []Resource{
		{0, Str(w.InterfaceName)},
		{1, Bool(w.Enable)},
		{5, Str(w.SSID)},
		{8, Int(1)},
		{15, Int(w.AuthenticationMode)},
		{16, Int(w.EncryptionMode)},
	}
	if w.KeyPhrase != "" {
		rs = append(rs, Resource{18, Str(w.KeyPhrase)})
	}
	return Instance{Object: ObjWLAN, ID: id, Resources: rs}
}
