// Package topics is the MQTT topic layout of provisiond, shared by the
// server (broker access rules, request handling) and the devices (the
// simulator): what each topic carries and who may publish to it.
package topics

import (
	"regexp"
	"strings"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/transport/wire"
)

// Topics. {cid} is the bootstrap client's ID, {id} a device UUID.
//
//	bootstrap/{cid}/enroll/json|cbor   device -> server  enrollment request
//	bootstrap/{cid}/result             server -> device  wire.Reply, in the request's format
//	devices/{id}/config                server -> device  wire.DeviceConfig (JSON), retained
//	devices/{id}/state                 device -> server  wire.StateReport (JSON)
//	devices/{id}/lease/renew           device -> server  lease renewal (payload ignored)
//	devices/{id}/lease                 server -> device  wire.Reply (JSON)
//	devices/{id}/renew/json|cbor       device -> server  wire.RenewRequest (a new CSR)
//	devices/{id}/certificate           server -> device  wire.Reply with the renewal, in the request's format
const (
	BootstrapRoot = "bootstrap"
	DevicesRoot   = "devices"
)

// bootstrapIDRE is the form of a bootstrap client ID: "boot-" and a nonce of
// 16-64 characters the device chose at random.
var bootstrapIDRE = regexp.MustCompile(`^boot-[A-Za-z0-9_-]{16,64}$`)

// ValidBootstrapID reports whether id may be used by a client without a certificate.
func ValidBootstrapID(id string) bool { return bootstrapIDRE.MatchString(id) }

// Enroll is where a bootstrap client publishes its request.
func Enroll(cid string, f wire.Format) string {
	return BootstrapRoot + "/" + cid + "/enroll/" + formatName(f)
}

// Result is where a bootstrap client receives its answer.
func Result(cid string) string { return BootstrapRoot + "/" + cid + "/result" }

// Config, State, RenewLease and Lease are a device's operational topics.
func Config(id string) string { return DevicesRoot + "/" + id + "/config" }

// State is where a device reports its state.
func State(id string) string { return DevicesRoot + "/" + id + "/state" }

// RenewLease is where a device asks for a lease renewal.
func RenewLease(id string) string { return DevicesRoot + "/" + id + "/lease/renew" }

// RenewCert is where a device asks for a new certificate.
func RenewCert(id string, f wire.Format) string {
	return DevicesRoot + "/" + id + "/renew/" + formatName(f)
}

// Certificate is where a device receives its renewed certificate.
func Certificate(id string) string { return DevicesRoot + "/" + id + "/certificate" }

// Lease is where a device receives its renewed lease.
func Lease(id string) string { return DevicesRoot + "/" + id + "/lease" }

func formatName(f wire.Format) string {
	if f == wire.CBOR {
		return "cbor"
	}
	return "json"
}

// Kind is what a device-published topic is for.
type Kind int

// Kinds of server-bound topics.
const (
	NotServerBound Kind = iota
	KindEnroll
	KindState
	KindRenewLease
	KindRenewCert
)

// Parsed is a server-bound topic, taken apart.
type Parsed struct {
	Kind     Kind
	ClientID string      // Enroll: the bootstrap client ID in the topic
	Format   wire.Format // Enroll
	DeviceID uuid.UUID   // State, Renew
}

// Parse recognises the topics devices publish to the server. Anything
// else (including malformed variants) is NotServerBound.
func Parse(topic string) Parsed {
	parts := strings.Split(topic, "/")
	switch {
	case len(parts) == 4 && parts[0] == BootstrapRoot && parts[2] == "enroll" && ValidBootstrapID(parts[1]):
		switch parts[3] {
		case "json":
			return Parsed{Kind: KindEnroll, ClientID: parts[1], Format: wire.JSON}
		case "cbor":
			return Parsed{Kind: KindEnroll, ClientID: parts[1], Format: wire.CBOR}
		}
	case len(parts) >= 3 && parts[0] == DevicesRoot:
		id, err := uuid.Parse(parts[1])
		if err != nil || id.String() != parts[1] { // canonical lower-case form only
			return Parsed{}
		}
		switch {
		case len(parts) == 3 && parts[2] == "state":
			return Parsed{Kind: KindState, DeviceID: id}
		case len(parts) == 4 && parts[2] == "lease" && parts[3] == "renew":
			return Parsed{Kind: KindRenewLease, DeviceID: id}
		case len(parts) == 4 && parts[2] == "renew" && parts[3] == "json":
			return Parsed{Kind: KindRenewCert, DeviceID: id, Format: wire.JSON}
		case len(parts) == 4 && parts[2] == "renew" && parts[3] == "cbor":
			return Parsed{Kind: KindRenewCert, DeviceID: id, Format: wire.CBOR}
		}
	}
	return Parsed{}
}

// HasWildcard reports whether a topic filter holds + or #.
func HasWildcard(filter string) bool { return strings.ContainsAny(filter, "+#") }
