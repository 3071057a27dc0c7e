package server

import (
	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/transport/coap"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/mqtt"
)

// The adapters the server plugs into the domain's ports. The ports are
// declared where they are used (enroll, the front ends); the adapters
// (devices.Store, pki.CA, firmware.Catalogue) cannot name them without an
// import cycle, so the composition root holds them together here.
var (
	_ enroll.Store        = (*devices.Store)(nil)
	_ enroll.Registry     = (*devices.Store)(nil)
	_ enroll.TokenStore   = (*devices.Store)(nil)
	_ enroll.RolloutStore = (*devices.Store)(nil)
	_ enroll.CertReplacer = (*devices.Store)(nil)
	_ enroll.DHCPStore    = (*devices.Store)(nil)
	_ enroll.Signer       = (*pki.CA)(nil)
	_ enroll.ServerSigner = (*pki.CA)(nil)
	_ enroll.Images       = (*firmware.Catalogue)(nil)

	_ httpapi.Inventory         = (*devices.Store)(nil)
	_ httpapi.Fleet             = fleetFront{}
	_ httpapi.Access            = (*enroll.Access)(nil)
	_ httpapi.FirmwareTargets   = (*enroll.Rollouts)(nil)
	_ httpapi.FirmwareCatalogue = (*firmware.Catalogue)(nil)
	_ httpapi.Revocation        = (*Server)(nil)

	_ mqtt.Operations = (*enroll.Service)(nil)
	_ enroll.Notifier = (*coap.Server)(nil)
	_ enroll.Notifier = (*mqtt.Handler)(nil)
)
