package pki_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/pki"
)

func TestSealer(t *testing.T) {
	s, err := pki.NewSealer([]byte("master-secret-0123456789"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pki.NewSealer([]byte("another-master-secret-99"))
	sealed, err := s.Seal("wifi-passphrase")
	if err != nil || !strings.HasPrefix(sealed, pki.SealedPrefix) || strings.Contains(sealed, "wifi-passphrase") {
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
	tampered := sealed[:len(sealed)-2] + "AA"
	for name, v := range map[string]string{"tampered": tampered, "not base64": pki.SealedPrefix + "!!!", "too short": pki.SealedPrefix + "AA"} {
		if _, err := s.Open(v); !errors.Is(err, pki.ErrUnseal) {
			t.Errorf("%s: %v, want ErrUnseal", name, err)
		}
	}
	if _, err := other.Open(sealed); !errors.Is(err, pki.ErrUnseal) {
		t.Errorf("another master secret opened it: %v", err)
	}
	if _, err := pki.NewSealer([]byte("short")); err == nil {
		t.Error("a 5-byte master secret was accepted")
	}
}
