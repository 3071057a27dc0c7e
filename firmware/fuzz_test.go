package firmware

import (
	"bytes"
	"crypto/ed25519"
	"testing"
	"time"
)

// FuzzVerify feeds a device's manifest check with anything: it must never
// panic, and it must accept only the exact bytes that were signed.
func FuzzVerify(f *testing.F) {
	pub, key, _ := ed25519.GenerateKey(bytes.NewReader(bytes.Repeat([]byte{7}, 64)))
	good, err := Sign(key, Manifest{Model: "TH1", Version: "1.2.3", Size: 10, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Created: time.Unix(0, 0).UTC()})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good.Manifest, good.Signature)
	f.Add([]byte(`{"model":"TH1"}`), good.Signature)
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, manifest, sig []byte) {
		m, err := Verify(pub, Signed{Manifest: manifest, Signature: sig})
		if err != nil {
			return
		}
		if !bytes.Equal(manifest, good.Manifest) || !bytes.Equal(sig, good.Signature) {
			t.Fatalf("accepted bytes that were never signed: %q", manifest)
		}
		if m.Validate() != nil {
			t.Fatalf("accepted an invalid manifest: %+v", m)
		}
	})
}
