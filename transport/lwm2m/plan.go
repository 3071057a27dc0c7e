package lwm2m

import (
	"fmt"

	"github.com/plgd-dev/go-coap/v3/message"

	"github.com/provisiond/provisiond/devices"
)

// Credentials are what a device authenticates to its management server
// with, as the Security object carries them.
type Credentials struct {
	Identity   []byte // resource 3: the PSK identity, or the device's certificate (DER)
	Secret     []byte // resource 5: the PSK, or the device's private key (PKCS#8 DER)
	ServerCert []byte // resource 4: the management server's certificate or CA (DER)
}

// Instance IDs a bootstrap writes: the management server's Security
// instance beside the bootstrap server's own (instance 0, which the client
// keeps through Bootstrap-Delete), its Server instance, and the WLAN.
const (
	SecurityInstance = 1
	ServerInstance   = 0
	WLANInstance     = 0
)

// NewPlan is what a bootstrap writes for a site's profile: the management
// server's Security and Server instances and, where the profile says, the
// site's Wi-Fi. creds must suit the profile's security mode: a PSK and its
// identity for psk, a certificate and key for certificate, and for est
// (the device enrolls with EST-coaps after Finish) at most the server's
// certificate.
func NewPlan(format message.MediaType, p devices.LwM2MProfile, creds Credentials, wifi *WLAN) (Plan, error) {
	sec := Security{ServerURI: p.ServerURI, ShortServerID: p.ShortServerID, ServerPublicKey: creds.ServerCert,
		PublicKeyOrIdentity: creds.Identity, SecretKey: creds.Secret}
	switch p.SecurityMode {
	case devices.LwM2MPSK:
		sec.Mode = ModePSK
		if len(creds.Identity) == 0 || len(creds.Secret) < 16 {
			return Plan{}, fmt.Errorf("lwm2m plan: psk mode needs an identity and a key of at least 16 bytes")
		}
	case devices.LwM2MCertificate:
		sec.Mode = ModeCertificate
		if len(creds.Identity) == 0 || len(creds.Secret) == 0 {
			return Plan{}, fmt.Errorf("lwm2m plan: certificate mode needs the device's certificate and key")
		}
	case devices.LwM2MEST:
		sec.Mode = ModeEST
		if len(creds.Identity) != 0 || len(creds.Secret) != 0 {
			return Plan{}, fmt.Errorf("lwm2m plan: est mode writes no credentials: the device enrolls with EST-coaps")
		}
	default:
		return Plan{}, fmt.Errorf("lwm2m plan: security mode %q", p.SecurityMode)
	}
	plan := Plan{Format: format, Instances: []Instance{
		sec.Instance(SecurityInstance),
		Server{ShortServerID: p.ShortServerID, Lifetime: p.Lifetime, Binding: p.Binding}.Instance(ServerInstance),
	}}
	if p.WiFi && wifi != nil {
		plan.Instances = append(plan.Instances, wifi.Instance(WLANInstance))
	}
	if _, err := EncodeInstance(plan.Instances[0], format); err != nil {
		return Plan{}, err
	}
	return plan, nil
}
