package mqtt_test

import (
	"testing"

	"github.com/provisiond/provisiond/transport/mqtt"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestParseTopic(t *testing.T) {
	const id = "9a9f6ae2-34ff-46b9-b084-f19ce89c655e"
	const cid = "boot-0123456789abcdefXYZ"
	cases := []struct {
		topic string
		kind  mqtt.Kind
	}{
		{"bootstrap/" + cid + "/enroll/json", mqtt.Enroll},
		{"bootstrap/" + cid + "/enroll/cbor", mqtt.Enroll},
		{"bootstrap/" + cid + "/enroll/xml", mqtt.NotServerBound},
		{"bootstrap/boot-short/enroll/json", mqtt.NotServerBound},
		{"bootstrap/" + cid + "/enroll/json/extra", mqtt.NotServerBound},
		{"bootstrap/+/enroll/json", mqtt.NotServerBound},
		{"bootstrap/" + cid + "/result", mqtt.NotServerBound},
		{"devices/" + id + "/state", mqtt.State},
		{"devices/" + id + "/lease/renew", mqtt.Renew},
		{"devices/" + id + "/renew/cbor", mqtt.RenewCert},
		{"devices/" + id + "/renew/xml", mqtt.NotServerBound},
		{"devices/" + id + "/config", mqtt.NotServerBound},
		{"devices/9A9F6AE2-34FF-46B9-B084-F19CE89C655E/state", mqtt.NotServerBound}, // not canonical
		{"devices/not-a-uuid/state", mqtt.NotServerBound},
		{"devices/" + id + "/state/x", mqtt.NotServerBound},
		{"/devices/" + id + "/state", mqtt.NotServerBound},
		{"", mqtt.NotServerBound},
	}
	for _, c := range cases {
		t.Run(c.topic, func(t *testing.T) {
			if got := mqtt.ParseTopic(c.topic).Kind; got != c.kind {
				t.Errorf("kind %v, want %v", got, c.kind)
			}
		})
	}
}

// FuzzParseTopic: whatever a device publishes to, a topic is recognised only
// when rendering it back gives exactly the same topic.
func FuzzParseTopic(f *testing.F) {
	f.Add("bootstrap/boot-0123456789abcdefXYZ/enroll/json")
	f.Add("devices/9a9f6ae2-34ff-46b9-b084-f19ce89c655e/lease/renew")
	f.Add("devices/9a9f6ae2-34ff-46b9-b084-f19ce89c655e/state")
	f.Add("bootstrap/#")
	f.Fuzz(func(t *testing.T, topic string) {
		p := mqtt.ParseTopic(topic)
		var back string
		switch p.Kind {
		case mqtt.NotServerBound:
			return
		case mqtt.Enroll:
			if !mqtt.ValidBootstrapID(p.ClientID) || (p.Format != wire.JSON && p.Format != wire.CBOR) {
				t.Fatalf("%q parsed to %+v", topic, p)
			}
			back = mqtt.EnrollTopic(p.ClientID, p.Format)
		case mqtt.State:
			back = mqtt.StateTopic(p.DeviceID.String())
		case mqtt.Renew:
			back = mqtt.RenewTopic(p.DeviceID.String())
		case mqtt.RenewCert:
			back = mqtt.RenewCertTopic(p.DeviceID.String(), p.Format)
		}
		if back != topic {
			t.Fatalf("%q parsed to %+v, which renders as %q", topic, p, back)
		}
	})
}
