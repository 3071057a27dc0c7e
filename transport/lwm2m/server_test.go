package lwm2m_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/lwm2m"
)

// Endpoint names map to serials by the configured pattern, and nothing
// else maps: another prefix or suffix, or a name that is not a serial.
func TestEndpointPattern(t *testing.T) {
	ep, err := lwm2m.ParseEndpoint("urn:dev:ops:acme-{serial}")
	if err != nil {
		t.Fatal(err)
	}
	if name := ep.Name("TH1-0001"); name != "urn:dev:ops:acme-TH1-0001" {
		t.Fatalf("name %q", name)
	}
	if s, ok := ep.Serial("urn:dev:ops:acme-TH1-0001"); !ok || s != "TH1-0001" {
		t.Fatalf("serial %q %v", s, ok)
	}
	for _, bad := range []string{"TH1-0001", "urn:dev:ops:other-TH1-0001", "urn:dev:ops:acme-", "urn:dev:ops:acme-a/b", "urn:dev:ops:acme-" + strings.Repeat("x", 65)} {
		if s, ok := ep.Serial(bad); ok {
			t.Errorf("%q maps to %q", bad, s)
		}
	}
	def, _ := lwm2m.ParseEndpoint("")
	if s, ok := def.Serial("TH1-0001"); !ok || s != "TH1-0001" || def.Name("X1") != "X1" {
		t.Fatalf("default pattern: %q %v", s, ok)
	}
	for _, bad := range []string{"urn:dev:ops:acme", "{serial}-{serial}"} {
		if _, err := lwm2m.ParseEndpoint(bad); err == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
}

// A Discover answer names the version and the objects the client has.
func TestParseDiscover(t *testing.T) {
	d := lwm2m.ParseDiscover([]byte(`</>;lwm2m="1.2",</0/0>;ssid=101,</1>,</3/0>, </12/1>,<junk,<>`))
	if d.Version != "1.2" || !d.Has(0) || !d.Has(1) || !d.Has(3) || !d.Has(12) || d.Has(5) {
		t.Fatalf("%+v", d)
	}
	if (lwm2m.Discovered{}).Has(12) != true {
		t.Fatal("a client that did not answer Discover is taken to have every object")
	}
}

// A commit that fails ends the bootstrap before Finish: the client never
// hears Finish and discards what was written.
func TestBootstrapCommitFails(t *testing.T) {
	d := &device{}
	p := plan(lwm2m.FormatTLV)
	p.Commit = func(context.Context) error { return errors.New("the store said no") }
	err := bootstrapOver(t, d, p, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "the store said no") {
		t.Fatalf("bootstrap: %v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.finished || len(d.written) != len(p.Instances) {
		t.Fatalf("finished %v after %d writes", d.finished, len(d.written))
	}
}

func FuzzParseDiscover(f *testing.F) {
	f.Add([]byte(`</>;lwm2m=1.1,</0/0>,</1>,</12>`))
	f.Add([]byte(`<`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := lwm2m.ParseDiscover(b)
		for o := range d.Objects {
			if !strings.Contains(string(b), "/"+strconv.FormatUint(uint64(o), 10)) {
				t.Fatalf("object %d not in %q", o, b)
			}
		}
	})
}
