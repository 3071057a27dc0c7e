package seal_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/pki/seal"
)

func TestSealer(t *testing.T) {
	s, err := seal.New([]byte("master-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := seal.New([]byte("another-master-secret-99"))
	sealed, err := s.Seal("wifi-passphrase")
	if err != nil || !strings.HasPrefix(sealed, seal.Prefix) || strings.Contains(sealed, "wifi-passphrase") {
		t.Fatalf("sealed %q, %v", sealed, err)
	}
	if again, _ := s.Seal("wifi-passphrase"); again == sealed {
		t.Error("two seals of the same value are equal (nonce reused?)")
	}
	if twice, _ := s.Seal(sealed); twice != sealed {
		t.Error("sealing a sealed value changed it")
	}
	if plain, err := s.Open(sealed); err != nil || plain != "wifi-passphrase" {
		t.Fatalf("open: %q %v", plain, err)
	}
	if plain, err := s.Open("stored-in-clear"); err != nil || plain != "stored-in-clear" {
		t.Errorf("a value from before sealing: %q %v", plain, err)
	}
	if empty, _ := s.Seal(""); empty != "" {
		t.Errorf("empty sealed to %q", empty)
	}
	// Flip one bit of the ciphertext (replacing base64 characters could
	// leave the bytes as they were: the last character's low bits are
	// padding, and "AA" may be what was there).
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(sealed, seal.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 1
	tampered := seal.Prefix + base64.RawStdEncoding.EncodeToString(raw)
	for name, v := range map[string]string{"tampered": tampered, "not base64": seal.Prefix + "!!!", "too short": seal.Prefix + "AA"} {
		if _, err := s.Open(v); !errors.Is(err, seal.ErrUnseal) {
			t.Errorf("%s: %v, want ErrUnseal", name, err)
		}
	}
	if _, err := other.Open(sealed); !errors.Is(err, seal.ErrUnseal) {
		t.Errorf("another master secret opened it: %v", err)
	}
	if _, err := seal.New([]byte("short")); err == nil {
		t.Error("a 5-byte master secret was accepted")
	}
}
