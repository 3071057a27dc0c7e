package lwm2m_test

import (
	"testing"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/transport/lwm2m"
)

func valueOf(in lwm2m.Instance, id uint16) (lwm2m.Value, bool) {
	for _, r := range in.Resources {
		if r.ID == id {
			return r.Value, true
		}
	}
	return lwm2m.Value{}, false
}

// A site's profile becomes the management server's Security and Server
// instances (and the WLAN where the profile asks), with the credentials its
// security mode needs and no others.
func TestNewPlan(t *testing.T) {
	prof := devices.LwM2MProfile{ServerURI: "coaps://lwm2m.example.net:5684"}
	if err := prof.Validate(); err != nil {
		t.Fatal(err)
	}
	wifi := &lwm2m.WLAN{InterfaceName: "wlan0", Enable: true, SSID: "Office", AuthenticationMode: 1, KeyPhrase: "correct horse"}
	certCreds := lwm2m.Credentials{Identity: []byte{0x30, 1}, Secret: []byte{0x30, 2}, ServerCert: []byte{0x30, 3}}

	plan, err := lwm2m.NewPlan(lwm2m.FormatTLV, prof, certCreds, wifi)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Instances) != 2 {
		t.Fatalf("%d instances without wifi in the profile", len(plan.Instances))
	}
	sec, srv := plan.Instances[0], plan.Instances[1]
	if sec.Object != lwm2m.ObjSecurity || sec.ID != 1 || srv.Object != lwm2m.ObjServer {
		t.Fatalf("instances %+v", plan.Instances)
	}
	if v, _ := valueOf(sec, 2); v.Int != int64(lwm2m.ModeCertificate) {
		t.Errorf("security mode %v", v)
	}
	if v, _ := valueOf(sec, 10); v.Int != 1 {
		t.Errorf("short server ID %v", v)
	}
	if v, _ := valueOf(srv, 1); v.Int != 86400 {
		t.Errorf("lifetime %v", v)
	}

	prof.WiFi = true
	prof.SecurityMode = devices.LwM2MEST
	plan, err = lwm2m.NewPlan(lwm2m.FormatSenMLCBOR, prof, lwm2m.Credentials{ServerCert: []byte{0x30, 3}}, wifi)
	if err != nil || len(plan.Instances) != 3 || plan.Instances[2].Object != lwm2m.ObjWLAN {
		t.Fatalf("est with wifi: %v %+v", err, plan.Instances)
	}
	if v, _ := valueOf(plan.Instances[0], 2); v.Int != int64(lwm2m.ModeEST) {
		t.Errorf("est mode %v", v)
	}

	for name, c := range map[string]struct {
		mode  devices.LwM2MSecurity
		creds lwm2m.Credentials
	}{
		"psk without a key":           {devices.LwM2MPSK, lwm2m.Credentials{Identity: []byte("TH1-0001")}},
		"psk key too short":           {devices.LwM2MPSK, lwm2m.Credentials{Identity: []byte("TH1-0001"), Secret: []byte("short")}},
		"certificate without its key": {devices.LwM2MCertificate, lwm2m.Credentials{Identity: []byte{0x30}}},
		"est with a key":              {devices.LwM2MEST, certCreds},
	} {
		p := prof
		p.SecurityMode = c.mode
		if _, err := lwm2m.NewPlan(lwm2m.FormatTLV, p, c.creds, wifi); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
