package server_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"strings"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

// TestRefusals sends broken and hostile enrollment requests and checks the
// exact answer and that the inventory did not change at all.
func TestRefusals(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	env.Site("tiny", "10.30.0.0/30") // one leasable address
	claimed := env.Mint(1, "hq")[0]
	unclaimed := env.Mint(1, "")[0]
	tiny := env.Mint(2, "tiny")
	if d, _ := simulator.NewDevice(tiny[0]); d != nil {
		if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
			t.Fatalf("fill the tiny pool: %v", err)
		}
	}
	used := env.Mint(1, "hq")[0]
	if d, _ := simulator.NewDevice(used); d != nil {
		if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	goodCSR := csrFor(t, p256)
	badSig := bytes.Clone(goodCSR)
	badSig[len(badSig)-5] ^= 0xFF

	req := func(b wireBundle, csr []byte) wire.EnrollRequest {
		return wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csr}
	}
	cbor := func(v any) []byte {
		out, err := wire.Marshal(wire.CBOR, v)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	jsonOf := func(v any) []byte {
		out, err := wire.Marshal(wire.JSON, v)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	wrongToken := req(claimed, goodCSR)
	wrongToken.ClaimToken = strings.Repeat("A", 32)
	unknown := req(claimed, goodCSR)
	unknown.Serial = "NO-SUCH-SERIAL"

	cases := []struct {
		name    string
		method  codes.Code
		cf      message.MediaType
		body    []byte
		code    codes.Code
		errCode string // wire.Error.Code, "" for a plain-text answer
		maxAge  bool
	}{
		{"unknown serial", codes.POST, message.AppCBOR, cbor(unknown), codes.Unauthorized, "unauthorized", false},
		{"wrong claim token", codes.POST, message.AppCBOR, cbor(wrongToken), codes.Unauthorized, "unauthorized", false},
		{"csr signature does not verify", codes.POST, message.AppCBOR, cbor(req(claimed, badSig)), codes.BadRequest, "bad_request", false},
		{"csr is not DER", codes.POST, message.AppCBOR, cbor(req(claimed, []byte("not a csr"))), codes.BadRequest, "bad_request", false},
		{"csr missing", codes.POST, message.AppCBOR, cbor(req(claimed, nil)), codes.BadRequest, "bad_request", false},
		{"P-384 key not enabled", codes.POST, message.AppCBOR, cbor(req(claimed, csrFor(t, p384))), codes.BadRequest, "unsupported_key", false},
		{"Ed25519 key not enabled", codes.POST, message.AppCBOR, cbor(req(claimed, csrFor(t, edKey))), codes.BadRequest, "unsupported_key", false},
		{"RSA key", codes.POST, message.AppCBOR, cbor(req(claimed, csrFor(t, rsaKey))), codes.BadRequest, "unsupported_key", false},
		{"malformed CBOR", codes.POST, message.AppCBOR, []byte{0xa1, 0x66}, codes.BadRequest, "bad_request", false},
		{"CBOR duplicate keys", codes.POST, message.AppCBOR, dupKeyCBOR(claimed.Serial), codes.BadRequest, "bad_request", false},
		{"CBOR nested too deep", codes.POST, message.AppCBOR, bytes.Repeat([]byte{0x81}, 40), codes.BadRequest, "bad_request", false},
		{"malformed JSON", codes.POST, message.AppJSON, []byte(`{"serial": `), codes.BadRequest, "bad_request", false},
		{"JSON csr is DER not PEM", codes.POST, message.AppJSON, []byte(`{"serial":"` + claimed.Serial + `","claim_token":"` + claimed.ClaimToken + `","csr":"MIIB"}`), codes.BadRequest, "bad_request", false},
		{"JSON csr PEM of a certificate", codes.POST, message.AppJSON, []byte(`{"serial":"x","claim_token":"` + claimed.ClaimToken + `","csr":` + quoted(pemOf("CERTIFICATE", goodCSR)) + `}`), codes.BadRequest, "bad_request", false},
		{"serial with path traversal", codes.POST, message.AppJSON, jsonOf(wire.EnrollRequest{Serial: "../../etc/passwd", ClaimToken: claimed.ClaimToken, CSR: goodCSR}), codes.BadRequest, "bad_request", false},
		{"claim token too short", codes.POST, message.AppCBOR, cbor(wire.EnrollRequest{Serial: claimed.Serial, ClaimToken: "short", CSR: goodCSR}), codes.BadRequest, "bad_request", false},
		{"text/plain content-format", codes.POST, message.TextPlain, []byte("serial=x"), codes.UnsupportedMediaType, "", false},
		{"no content-format", codes.POST, noFormat, cbor(req(claimed, goodCSR)), codes.UnsupportedMediaType, "", false},
		{"body too large", codes.POST, message.AppCBOR, bytes.Repeat([]byte{0}, wire.MaxRequestBytes+1), codes.RequestEntityTooLarge, "too_large", false},
		{"GET /enroll", codes.GET, message.AppCBOR, nil, codes.MethodNotAllowed, "", false},
		{"unknown resource", codes.POST, message.AppCBOR, nil, codes.NotFound, "", false},
		{"device not claimed for a site", codes.POST, message.AppCBOR, cbor(req(unclaimed, goodCSR)), codes.Forbidden, "not_claimed", true},
		{"used token with a new key", codes.POST, message.AppCBOR, cbor(req(used, goodCSR)), codes.Forbidden, "token_used", false},
		{"site pool exhausted", codes.POST, message.AppCBOR, cbor(req(tiny[1], goodCSR)), codes.ServiceUnavailable, "pool_exhausted", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, err := env.Server.Store().Digest()
			if err != nil {
				t.Fatal(err)
			}
			path := "/enroll"
			if c.name == "unknown resource" {
				path = "/nope"
			}
			a := rawRequest(t, env, c.method, path, c.cf, c.body, nil)
			if a.Code != c.code {
				t.Errorf("code %v, want %v (body %q)", a.Code, c.code, a.Body)
			}
			if c.errCode != "" {
				var e wire.Error
				if err := wire.Unmarshal(wire.Format(a.Format), a.Body, &e); err != nil || e.Code != c.errCode || e.Message == "" {
					t.Errorf("error body %q (format %v): %+v %v, want code %q", a.Body, a.Format, e, err, c.errCode)
				}
				if wire.Format(a.Format) != wire.Format(c.cf) {
					t.Errorf("answered in %v, want the request's %v", a.Format, c.cf)
				}
			} else if len(a.Body) == 0 {
				t.Error("no diagnostic payload")
			}
			if c.maxAge != (a.MaxAge > 0) {
				t.Errorf("Max-Age %d, want present=%v", a.MaxAge, c.maxAge)
			}
			if after, _ := env.Server.Store().Digest(); after != before {
				t.Error("the refusal changed the inventory")
			}
		})
	}
}

type wireBundle = wire.Bundle

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
