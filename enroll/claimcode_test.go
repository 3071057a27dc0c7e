package enroll_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/enroll"
)

func TestClaimCodeRoundTrip(t *testing.T) {
	c := enroll.NewClaimCode("TH1-01QGPS5FNZ")
	typed := "  PD1:" + c.Serial + ":" + strings.ToLower(c.Secret) + ":" + strings.ToLower(c.String()[len(c.String())-2:]) + "\n"
	for _, in := range []string{c.String(), c.URL("https://prov.example.net:8443/"), typed} {
		got, err := enroll.ParseClaimCode(in)
		if err != nil || got.Serial != c.Serial || got.Secret != c.Secret {
			t.Errorf("parse %q: %+v %v", in, got, err)
		}
	}
	if len(c.String()) > 48 {
		t.Errorf("code %q is %d characters: too long for a small QR code", c, len(c.String()))
	}
}

func TestClaimCodeRefusals(t *testing.T) {
	c := enroll.NewClaimCode("TH1-01QGPS5FNZ").String()
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	secretAt := strings.LastIndex(c, ":") - 3
	for name, in := range map[string]string{
		"empty":            "",
		"other prefix":     "XX1" + c[3:],
		"missing part":     c[:strings.LastIndex(c, ":")],
		"typo in secret":   flip(c, secretAt),
		"typo in serial":   strings.Replace(c, "TH1-", "TH2-", 1),
		"bad serial":       "PD1:../etc:" + c[strings.Index(c, ":")+16:],
		"extra part":       c + ":X",
		"secret too short": "PD1:TH1:ABC:12",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := enroll.ParseClaimCode(in); !errors.Is(err, enroll.ErrInvalid) {
				t.Errorf("parse %q: %v, want ErrInvalid", in, err)
			}
		})
	}
}

func FuzzParseClaimCode(f *testing.F) {
	f.Add(enroll.NewClaimCode("TH1-01QGPS5FNZ").String())
	f.Add("https://h/claim#" + enroll.NewClaimCode("A").String())
	f.Add("PD1:::")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := enroll.ParseClaimCode(in)
		if err != nil {
			return
		}
		again, err := enroll.ParseClaimCode(c.String())
		if err != nil || again != c {
			t.Fatalf("%q parsed to %+v, which does not round-trip: %+v %v", in, c, again, err)
		}
	})
}

func TestValidDNSName(t *testing.T) {
	for n, want := range map[string]bool{"mqtt.example.net": true, "*.example.net": true, "a": true, "localhost.": true,
		"": false, "\x93": false, "a..b": false, "-a.b": false, "a-.b": false, "a.*.b": false, "a b": false, strings.Repeat("a", 64): false} {
		if got := enroll.ValidDNSName(n); got != want {
			t.Errorf("ValidDNSName(%q) = %v", n, got)
		}
	}
}
