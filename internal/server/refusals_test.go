package server_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/transport/wire"
)

func pemOf(typ string, der []byte) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func quoted(s string) string {
	b, _ := wire.Marshal(wire.JSON, s)
	return string(b)
}

// dupKeyCBOR is {"serial": s, "serial": s}: a map with a duplicate key.
func dupKeyCBOR(s string) []byte {
	out := []byte{0xa2}
	for range 2 {
		out = append(out, 0x66)
		out = append(out, "serial"...)
		out = append(out, 0x60|byte(len(s)))
		out = append(out, s...)
	}
	return out
}

// TestThrottling: repeated failures for one serial are answered 4.29 with
// Max-Age, and then even the right token is refused until the block ends.
func TestThrottling(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	b := env.Mint(1, "hq")[0]
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	bad := wire.EnrollRequest{Serial: b.Serial, ClaimToken: strings.Repeat("B", 32), CSR: csrFor(t, p256)}
	body, _ := wire.Marshal(wire.CBOR, bad)
	for i := range 5 {
		if a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, body, nil); a.Code != codes.Unauthorized {
			t.Fatalf("attempt %d: %v", i+1, a.Code)
		}
	}
	a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, body, nil)
	if a.Code != codes.TooManyRequests || a.MaxAge == 0 {
		t.Fatalf("6th failure: %v Max-Age %d, want 4.29 with Max-Age", a.Code, a.MaxAge)
	}
	good, _ := wire.Marshal(wire.CBOR, wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csrFor(t, p256)})
	if a := rawRequest(t, env, codes.POST, "/enroll", message.AppCBOR, good, nil); a.Code != codes.TooManyRequests {
		t.Errorf("right token while throttled: %v, want 4.29", a.Code)
	}
}
