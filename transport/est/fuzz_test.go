package est_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/transport/est"
)

func sampleCSR(t testing.TB) []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// DecodeCSR takes base64 with or without line breaks, and DER; it refuses
// anything else with ErrBadMessage.
func TestDecodeCSR(t *testing.T) {
	der := sampleCSR(t)
	b64 := base64.StdEncoding.EncodeToString(der)
	lines := ""
	for i := 0; i < len(b64); i += 64 {
		lines += b64[i:min(i+64, len(b64))] + "\r\n"
	}
	for name, in := range map[string][]byte{"base64": []byte(b64), "MIME lines": []byte(lines), "DER": der, "DER ending in a space byte": nil} {
		if in == nil {
			continue
		}
		got, err := est.DecodeCSR(in)
		if err != nil || !bytes.Equal(got, der) {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, in := range map[string][]byte{
		"empty": nil, "spaces": []byte(" \r\n"), "not base64": []byte("%%%"),
		"base64 of text": []byte(base64.StdEncoding.EncodeToString([]byte("hello"))),
		"trailing data":  []byte(base64.StdEncoding.EncodeToString(append(der, 0x30, 0x00))),
	} {
		if _, err := est.DecodeCSR(in); !errors.Is(err, est.ErrBadMessage) {
			t.Errorf("%s: %v, want ErrBadMessage", name, err)
		}
	}
}

// A certs-only PKCS#7 round-trips its certificates in order.
func TestCertsOnlyRoundTrip(t *testing.T) {
	root, err := mfr.New("R")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := root.Issue("S-1", mfr.Options{})
	der, err := est.CertsOnly([]*x509.Certificate{leaf.Cert, root.Cert})
	if err != nil {
		t.Fatal(err)
	}
	got, err := est.ParseCertsOnly(der)
	if err != nil || len(got) != 2 || !got[0].Equal(leaf.Cert) || !got[1].Equal(root.Cert) {
		t.Fatalf("round trip: %d certificates, %v", len(got), err)
	}
}

func FuzzDecodeCSR(f *testing.F) {
	der := sampleCSR(f)
	f.Add(der)
	f.Add([]byte(base64.StdEncoding.EncodeToString(der)))
	f.Add([]byte("MIIB\r\nAAAA"))
	f.Add([]byte{0x30, 0x80, 0x00, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := est.DecodeCSR(in)
		if err != nil {
			if !errors.Is(err, est.ErrBadMessage) {
				t.Fatalf("error without ErrBadMessage: %v", err)
			}
			return
		}
		if len(out) == 0 || out[0] == 0 && len(out) == 1 {
			t.Fatalf("accepted %q as %x", in, out)
		}
	})
}

func FuzzParseCertsOnly(f *testing.F) {
	root, err := mfr.New("R")
	if err != nil {
		f.Fatal(err)
	}
	der, _ := est.CertsOnly([]*x509.Certificate{root.Cert})
	f.Add(der)
	f.Add([]byte{0x30, 0x03, 0x06, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, in []byte) {
		certs, err := est.ParseCertsOnly(in)
		if err != nil {
			if !errors.Is(err, est.ErrBadMessage) {
				t.Fatalf("error without ErrBadMessage: %v", err)
			}
			return
		}
		if len(certs) == 0 {
			t.Fatal("no certificates and no error")
		}
	})
}
