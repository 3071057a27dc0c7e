package topics_test

import (
	"testing"

	"github.com/provisiond/provisiond/transport/mqtt/topics"
	"github.com/provisiond/provisiond/transport/wire"
)

func TestParseTopic(t *testing.T) {
	const id = "9a9f6ae2-34ff-46b9-b084-f19ce89c655e"
	const cid = "boot-0123456789abcdefXYZ"
	cases := []struct {
		topic string
		kind  topics.Kind
	}{
		{"bootstrap/" + cid + "/enroll/json", topics.KindEnroll},
		{"bootstrap/" + cid + "/enroll/cbor", topics.KindEnroll},
		{"bootstrap/" + cid + "/enroll/xml", topics.NotServerBound},
		{"bootstrap/boot-short/enroll/json", topics.NotServerBound},
		{"bootstrap/" + cid + "/enroll/json/extra", topics.NotServerBound},
		{"bootstrap/+/enroll/json", topics.NotServerBound},
		{"bootstrap/" + cid + "/result", topics.NotServerBound},
		{"devices/" + id + "/state", topics.KindState},
		{"devices/" + id + "/lease/renew", topics.KindRenewLease},
		{"devices/" + id + "/renew/cbor", topics.KindRenewCert},
		{"devices/" + id + "/renew/xml", topics.NotServerBound},
		{"devices/" + id + "/config", topics.NotServerBound},
		{"devices/9A9F6AE2-34FF-46B9-B084-F19CE89C655E/state", topics.NotServerBound}, // not canonical
		{"devices/not-a-uuid/state", topics.NotServerBound},
		{"devices/" + id + "/state/x", topics.NotServerBound},
		{"/devices/" + id + "/state", topics.NotServerBound},
		{"", topics.NotServerBound},
	}
	for _, c := range cases {
		t.Run(c.topic, func(t *testing.T) {
			if got := topics.Parse(c.topic).Kind; got != c.kind {
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
		p := topics.Parse(topic)
		var back string
		switch p.Kind {
		case topics.NotServerBound:
			return
		case topics.KindEnroll:
			if !topics.ValidBootstrapID(p.ClientID) || (p.Format != wire.JSON && p.Format != wire.CBOR) {
				t.Fatalf("%q parsed to %+v", topic, p)
			}
			back = topics.Enroll(p.ClientID, p.Format)
		case topics.KindState:
			back = topics.State(p.DeviceID.String())
		case topics.KindRenewLease:
			back = topics.RenewLease(p.DeviceID.String())
		case topics.KindRenewCert:
			back = topics.RenewCert(p.DeviceID.String(), p.Format)
		}
		if back != topic {
			t.Fatalf("%q parsed to %+v, which renders as %q", topic, p, back)
		}
	})
}
