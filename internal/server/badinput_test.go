package server_test

//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/transport/mqtt/topics"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/google/uuid"
	piondtls "github.com/pion/dtls/v3"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"go.step.sm/crypto/pemutil"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// hostileInput is one row of the bad-input matrix: send returns what the
// server answered, in the transport's own terms ("4.01 unauthorized",
// "CONNECT refused", "HTTP 403 forbidden", ...).
type hostileInput struct {
	via  string // coap, mqtt, dtls, https
	name string
	send func(t *testing.T) string
	want string
}

// TestBadInputMatrix sends hostile and broken inputs over every transport
// and asserts, for each, the exact answer and that the inventory did not
// change at all (Store.Digest hashes every record).
func TestBadInputMatrix(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	env.Site("tiny", "10.30.0.0/30") // one leasable address
	claimed := env.Mint(1, "hq")[0]
	unclaimed := env.Mint(1, "")[0]
	tiny := env.Mint(2, "tiny")
	enrolled := func(b wire.Bundle) *simulator.Device {
		d, err := simulator.NewDevice(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Enroll(ctxT(t), simulator.EnrollOptions{}); err != nil {
			t.Fatal(err)
		}
		return d
	}
	enrolled(tiny[0]) // fills the tiny pool
	used := env.Mint(1, "hq")[0]
	enrolled(used)
	dev := enrolled(env.Mint(1, "hq")[0])     // a device in good standing
	gone := enrolled(env.Mint(1, "hq")[0])    // revoked below
	expired := enrolled(env.Mint(1, "hq")[0]) // its current certificate has expired
	devID := uuid.MustParse(dev.Enrollment.DeviceID)
	devCert, err := dev.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	goneCert, _ := gone.TLSCertificate()
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: []string{gone.Enrollment.DeviceID}, Reason: "matrix"}, nil); err != nil {
		t.Fatal(err)
	}
	expiredCert := expiredCurrentCertificate(t, env, expired)
	other := servertest.Start(t) // another provisiond: another CA
	foreignCert := deviceCert(t, other.Server.CA(), mustKey(t), devID)
	supersededCert := deviceCert(t, env.Server.CA(), mustKey(t), devID) // our CA, not the device's current one

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	goodCSR := csrFor(t, p256)
	badSig := bytes.Clone(goodCSR)
	badSig[len(badSig)-5] ^= 0xFF
	req := func(b wire.Bundle, csr []byte) wire.EnrollRequest {
		return wire.EnrollRequest{Serial: b.Serial, ClaimToken: b.ClaimToken, CSR: csr}
	}
	encode := func(f wire.Format, v any) []byte {
		out, err := wire.Marshal(f, v)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	cbor := func(v any) []byte { return encode(wire.CBOR, v) }
	jsonOf := func(v any) []byte { return encode(wire.JSON, v) }
	wrongToken := req(claimed, goodCSR)
	wrongToken.ClaimToken = strings.Repeat("A", 32)
	unknown := req(claimed, goodCSR)
	unknown.Serial = "NO-SUCH-SERIAL"

	// The answer over CoAP: the code, the error code of the body (which must
	// come in the request's format, with a message) and whether Max-Age is
	// set.
	coapPath := func(method codes.Code, path string, cf message.MediaType, body []byte) func(t *testing.T) string {
		return func(t *testing.T) string {
			a := rawRequest(t, env, method, path, cf, body, nil)
			got := coapCode(a.Code)
			var e wire.Error
			if a.Format == message.AppCBOR || a.Format == message.AppJSON {
				if err := wire.Unmarshal(wire.Format(a.Format), a.Body, &e); err != nil || e.Message == "" {
					t.Errorf("error body %q: %+v %v", a.Body, e, err)
				}
				if wire.Format(a.Format) != wire.Format(cf) {
					t.Errorf("answered in %v, want the request's %v", a.Format, cf)
				}
				got += " " + e.Code
			} else if len(a.Body) == 0 {
				t.Error("no diagnostic payload")
			}
			if a.MaxAge > 0 {
				got += " +Max-Age"
			}
			return got
		}
	}
	coap := func(cf message.MediaType, body []byte) func(t *testing.T) string {
		return coapPath(codes.POST, "/enroll", cf, body)
	}
	// The answer over MQTT: a bootstrap session publishes body on its
	// enrollment topic and reads the Reply.
	mqttEnroll := func(f wire.Format, body []byte) func(t *testing.T) string {
		return func(t *testing.T) string { return mqttBootstrap(t, env, f, body) }
	}
	// Whether a certificate opens an authenticated session.
	dtlsWith := func(cert *tls.Certificate) func(t *testing.T) string {
		return func(t *testing.T) string { return dtlsLease(t, env, cert) }
	}
	mqttWith := func(clientID string, cert *tls.Certificate) func(t *testing.T) string {
		return func(t *testing.T) string {
			if _, err := mqttDial(t, env, clientID, cert); err != nil {
				return "CONNECT refused"
			}
			return "connected"
		}
	}
	// What the broker answers a SUBSCRIBE.
	subscribe := func(asDevice bool, filter func(self string) string) func(t *testing.T) string {
		return func(t *testing.T) string {
			id, cert := simulator.Nonce(), (*tls.Certificate)(nil)
			if asDevice {
				id, cert = devID.String(), devCert
			}
			c, err := mqttDial(t, env, id, cert)
			if err != nil {
				t.Fatal(err)
			}
			if subAllowed(t, c, filter(id)) {
				return "SUBACK granted"
			}
			return "SUBACK refused"
		}
	}
	// The ops API: the status and the error code of the JSON body.
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	tokenFor := func(role devices.Role, sites ...string) string {
		var res httpapi.TokenCreated
		if err := env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "matrix-" + string(role), Role: role, Sites: sites}, &res); err != nil {
			t.Fatal(err)
		}
		return res.Secret
	}
	adminRaw, err := os.ReadFile(filepath.Join(env.DataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	admin := strings.TrimSpace(string(adminRaw))
	installer, viewer, otherSite := tokenFor(devices.RoleInstaller, "hq"), tokenFor(devices.RoleViewer), tokenFor(devices.RoleOperator, "tiny")
	api := func(method, path, token string, body io.Reader) func(t *testing.T) string {
		return func(t *testing.T) string {
			r, _ := http.NewRequest(method, "https://"+env.Server.HTTPAddr().String()+path, body)
			if token != "" {
				r.Header.Set("Authorization", "Bearer "+token)
			}
			r.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e httpapi.ErrorBody
			raw, _ := io.ReadAll(resp.Body)
			if err := json.Unmarshal(raw, &e); err != nil || e.Error.Message == "" {
				t.Errorf("error body %q: %v", raw, err)
			}
			return fmt.Sprintf("HTTP %d %s", resp.StatusCode, e.Error.Code)
		}
	}
	body := func(s string) io.Reader { return strings.NewReader(s) }

	cases := []hostileInput{
		// Enrollment over CoAP/DTLS.
		{"coap", "unknown serial", coap(message.AppCBOR, cbor(unknown)), "4.01 unauthorized"},
		{"coap", "wrong claim token", coap(message.AppCBOR, cbor(wrongToken)), "4.01 unauthorized"},
		{"coap", "used token with a new key (replay)", coap(message.AppCBOR, cbor(req(used, goodCSR))), "4.03 token_used"},
		{"coap", "CSR signature does not verify", coap(message.AppCBOR, cbor(req(claimed, badSig))), "4.00 bad_request"},
		{"coap", "CSR is not DER", coap(message.AppCBOR, cbor(req(claimed, []byte("not a csr")))), "4.00 bad_request"},
		{"coap", "CSR missing", coap(message.AppCBOR, cbor(req(claimed, nil))), "4.00 bad_request"},
		{"coap", "P-384 key when not enabled", coap(message.AppCBOR, cbor(req(claimed, csrFor(t, p384)))), "4.00 unsupported_key"},
		{"coap", "Ed25519 key when not enabled", coap(message.AppCBOR, cbor(req(claimed, csrFor(t, edKey)))), "4.00 unsupported_key"},
		{"coap", "RSA key", coap(message.AppCBOR, cbor(req(claimed, csrFor(t, rsaKey)))), "4.00 unsupported_key"},
		{"coap", "truncated CBOR", coap(message.AppCBOR, cbor(req(claimed, goodCSR))[:40]), "4.00 bad_request"},
		{"coap", "malformed CBOR", coap(message.AppCBOR, []byte{0xa1, 0x66}), "4.00 bad_request"},
		{"coap", "CBOR with duplicate keys", coap(message.AppCBOR, dupKeyCBOR(claimed.Serial)), "4.00 bad_request"},
		{"coap", "CBOR nested 40 deep", coap(message.AppCBOR, bytes.Repeat([]byte{0x81}, 40)), "4.00 bad_request"},
		{"coap", "truncated JSON", coap(message.AppJSON, []byte(`{"serial": `)), "4.00 bad_request"},
		{"coap", "JSON nested 40 deep", coap(message.AppJSON, []byte(strings.Repeat("[", 40)+strings.Repeat("]", 40))), "4.00 bad_request"},
		{"coap", "JSON CSR is bare DER, not PEM", coap(message.AppJSON, []byte(`{"serial":"`+claimed.Serial+`","claim_token":"`+claimed.ClaimToken+`","csr":"MIIB"}`)), "4.00 bad_request"},
		{"coap", "JSON CSR is a certificate's PEM", coap(message.AppJSON, []byte(`{"serial":"x","claim_token":"`+claimed.ClaimToken+`","csr":`+quoted(pemOf("CERTIFICATE", goodCSR))+`}`)), "4.00 bad_request"},
		{"coap", "serial with path traversal", coap(message.AppJSON, jsonOf(wire.EnrollRequest{Serial: "../../etc/passwd", ClaimToken: claimed.ClaimToken, CSR: goodCSR})), "4.00 bad_request"},
		{"coap", "claim token too short", coap(message.AppCBOR, cbor(wire.EnrollRequest{Serial: claimed.Serial, ClaimToken: "short", CSR: goodCSR})), "4.00 bad_request"},
		{"coap", "text/plain content-format", coap(message.TextPlain, []byte("serial=x")), "4.15"},
		{"coap", "no content-format", coap(noFormat, cbor(req(claimed, goodCSR))), "4.15"},
		{"coap", "body over 4 KiB", coap(message.AppCBOR, bytes.Repeat([]byte{0}, wire.MaxRequestBytes+1)), "4.13 too_large"},
		{"coap", "GET /enroll", coapPath(codes.GET, "/enroll", message.AppCBOR, nil), "4.05"},
		{"coap", "unknown resource", coapPath(codes.POST, "/nope", message.AppCBOR, nil), "4.04"},
		{"coap", "lease renewal without a certificate", coapPath(codes.POST, "/lease", message.AppCBOR, nil), "4.01 unauthorized"},
		{"coap", "device not claimed for a site", coap(message.AppCBOR, cbor(req(unclaimed, goodCSR))), "4.03 not_claimed +Max-Age"},
		{"coap", "site pool exhausted", coap(message.AppCBOR, cbor(req(tiny[1], goodCSR))), "5.03 pool_exhausted +Max-Age"},

		// Enrollment over MQTT: the same answers.
		{"mqtt", "unknown serial", mqttEnroll(wire.JSON, jsonOf(unknown)), "4.01 unauthorized"},
		{"mqtt", "wrong claim token", mqttEnroll(wire.CBOR, cbor(wrongToken)), "4.01 unauthorized"},
		{"mqtt", "used token with a new key (replay)", mqttEnroll(wire.JSON, jsonOf(req(used, goodCSR))), "4.03 token_used"},
		{"mqtt", "CSR with a bad signature", mqttEnroll(wire.JSON, jsonOf(req(claimed, badSig))), "4.00 bad_request"},
		{"mqtt", "truncated JSON", mqttEnroll(wire.JSON, []byte(`{"serial":"`)), "4.00 bad_request"},
		{"mqtt", "CBOR with duplicate keys", mqttEnroll(wire.CBOR, dupKeyCBOR(claimed.Serial)), "4.00 bad_request"},
		{"mqtt", "CBOR sent on the JSON topic", mqttEnroll(wire.JSON, cbor(req(claimed, goodCSR))), "4.00 bad_request"},
		{"mqtt", "body over 4 KiB", mqttEnroll(wire.JSON, bytes.Repeat([]byte(" "), wire.MaxRequestBytes+1)), "4.13 too_large"},

		// Certificates at the DTLS handshake and at MQTT CONNECT.
		{"dtls", "expired certificate", dtlsWith(expiredCert), "refused"},
		{"dtls", "certificate of a revoked device", dtlsWith(goneCert), "refused"},
		{"dtls", "certificate from a foreign CA", dtlsWith(foreignCert), "refused"},
		{"dtls", "superseded certificate (our CA)", dtlsWith(supersededCert), "refused"},
		{"mqtt", "expired certificate", mqttWith(expired.Enrollment.DeviceID, expiredCert), "CONNECT refused"},
		{"mqtt", "certificate of a revoked device", mqttWith(gone.Enrollment.DeviceID, goneCert), "CONNECT refused"},
		{"mqtt", "certificate from a foreign CA", mqttWith(devID.String(), foreignCert), "CONNECT refused"},
		{"mqtt", "superseded certificate (our CA)", mqttWith(devID.String(), supersededCert), "CONNECT refused"},
		{"mqtt", "certificate with another device's client ID", mqttWith(gone.Enrollment.DeviceID, devCert), "CONNECT refused"},
		{"mqtt", "no certificate, a device's client ID", mqttWith(devID.String(), nil), "CONNECT refused"},
		{"mqtt", "no certificate, client ID not boot-<nonce>", mqttWith("../../etc/passwd", nil), "CONNECT refused"},

		// Subscriptions outside one's own topics.
		{"mqtt", "device subscribes to another device's config", subscribe(true, func(string) string { return topics.Config(gone.Enrollment.DeviceID) }), "SUBACK refused"},
		{"mqtt", "device subscribes to every device's config", subscribe(true, func(string) string { return "devices/+/config" }), "SUBACK refused"},
		{"mqtt", "device subscribes to everything", subscribe(true, func(string) string { return "#" }), "SUBACK refused"},
		{"mqtt", "bootstrap client subscribes to all results", subscribe(false, func(string) string { return "bootstrap/+/result" }), "SUBACK refused"},
		{"mqtt", "bootstrap client subscribes to another's result", subscribe(false, func(string) string { return topics.Result(simulator.Nonce()) }), "SUBACK refused"},
		{"mqtt", "bootstrap client subscribes to $SYS", subscribe(false, func(string) string { return "$SYS/#" }), "SUBACK refused"},

		// The ops API.
		{"https", "no token", api("GET", "/api/v1/devices", "", nil), "HTTP 401 unauthorized"},
		{"https", "unknown token", api("GET", "/api/v1/devices", "pdt_"+strings.Repeat("x", 40), nil), "HTTP 401 unauthorized"},
		{"https", "viewer revokes a device", api("POST", "/api/v1/revocations", viewer, body(`{"devices":["`+dev.Enrollment.DeviceID+`"],"reason":"x"}`)), "HTTP 403 forbidden"},
		{"https", "installer creates a token", api("POST", "/api/v1/tokens", installer, body(`{"name":"x","role":"admin"}`)), "HTTP 403 forbidden"},
		{"https", "operator of another site reconfigures hq", api("PATCH", "/api/v1/sites/hq", otherSite, body(`{"ssid":"pwned"}`)), "HTTP 403 forbidden"},
		{"https", "malformed JSON body", api("POST", "/api/v1/sites", admin, body(`{"name":`)), "HTTP 400 invalid"},
		{"https", "body over 32 MiB", api("POST", "/api/v1/batches", admin, io.MultiReader(body(`{"site":"hq","rows":[`), io.LimitReader(spaces{}, httpapi.MaxBodyBytes))), "HTTP 413 too_large"},
		{"https", "site named ../../etc", api("POST", "/api/v1/sites", admin, body(`{"name":"../../etc","ssid":"x","security":"wpa2-psk","passphrase":"12345678","cidr":"10.99.0.0/24"}`)), "HTTP 400 invalid"},
	}
	// Token brute force last: it blocks the serial. Five wrong tokens are
	// answered 4.01, the sixth 4.29 with Max-Age, and so is the right one.
	victim := env.Mint(1, "hq")[0]
	guess := req(victim, goodCSR)
	guess.ClaimToken = strings.Repeat("B", 32)
	cases = append(cases, hostileInput{"coap", "claim token brute force (6th guess)", func(t *testing.T) string {
		for range 5 {
			coap(message.AppCBOR, cbor(guess))(t)
		}
		return coap(message.AppCBOR, cbor(guess))(t)
	}, "4.29 throttled +Max-Age"}, hostileInput{"coap", "right token while throttled", coap(message.AppCBOR, cbor(req(victim, goodCSR))), "4.29 throttled +Max-Age"})

	if len(cases) < 40 {
		t.Fatalf("the matrix has %d rows; issue 6 asks for 40 or more", len(cases))
	}
	for _, c := range cases {
		t.Run(c.via+"/"+c.name, func(t *testing.T) {
			before, err := env.Server.Store().Digest(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if got := c.send(t); got != c.want {
				t.Errorf("answer %q, want %q", got, c.want)
			}
			if after, _ := env.Server.Store().Digest(context.Background()); after != before {
				t.Error("the refusal changed the inventory")
			}
		})
	}
	t.Logf("%d hostile inputs", len(cases))
}

// spaces is endless JSON whitespace.
type spaces struct{}

func (spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

// coapCode writes a CoAP code as class.detail ("4.01").
func coapCode(c codes.Code) string { return fmt.Sprintf("%d.%02d", c>>5, c&0x1f) }

// mqttBootstrap publishes body on a fresh bootstrap session's enrollment
// topic and returns the Reply's status and error code.
func mqttBootstrap(t *testing.T, env *servertest.Env, f wire.Format, body []byte) string {
	t.Helper()
	id := simulator.Nonce()
	c, err := mqttDial(t, env, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	replies := make(chan []byte, 1)
	tok := c.Subscribe(topics.Result(id), 1, func(_ paho.Client, m paho.Message) {
		select {
		case replies <- m.Payload():
		default:
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	if tok := c.Publish(topics.Enroll(id, f), 1, false, body); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case raw := <-replies:
		var r wire.Reply
		if err := wire.Unmarshal(f, raw, &r); err != nil {
			t.Fatalf("reply %q: %v", raw, err)
		}
		if r.Error == nil || r.Error.Message == "" {
			return r.Status
		}
		return r.Status + " " + r.Error.Code
	case <-time.After(10 * time.Second):
		return "no reply"
	}
}

// dtlsLease asks for a lease renewal over DTLS with cert: "renewed" when
// the server took the certificate as a device's, "refused" when the
// handshake failed or the session was not authenticated (4.01).
func dtlsLease(t *testing.T, env *servertest.Env, cert *tls.Certificate) string {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	conn, err := coapdtls.Dial(env.CoAPS(), &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{*cert}, ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret})
	if err != nil {
		return "refused"
	}
	defer conn.Close()
	resp, err := conn.Post(ctxT(t), "/lease", message.AppCBOR, bytes.NewReader(nil))
	switch {
	case err != nil:
		return "refused"
	case resp.Code() == codes.Changed:
		return "renewed"
	case resp.Code() == codes.Unauthorized:
		return "refused"
	}
	return coapCode(resp.Code())
}

// expiredCurrentCertificate issues, with the server's own intermediate CA,
// a certificate for d that expired an hour ago, and records it as d's
// current certificate: expiry is then the only thing wrong with it.
func expiredCurrentCertificate(t *testing.T, env *servertest.Env, d *simulator.Device) *tls.Certificate {
	t.Helper()
	caDir := filepath.Join(env.DataDir, server.CADir)
	signer, err := pemutil.Read(filepath.Join(caDir, pki.IntermediateKeyFile), pemutil.WithPassword([]byte(env.Config.CAPassphrase)))
	if err != nil {
		t.Fatal(err)
	}
	key := mustKey(t)
	id := uuid.MustParse(d.Enrollment.DeviceID)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: id.String()},
		URIs:      []*url.URL{{Scheme: "urn", Opaque: "uuid:" + id.String()}},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	inter := env.Server.CA().Intermediate()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	if _, err := env.Server.Store().UpdateDevice(context.Background(), id, func(x *devices.Device) (*devices.AuditEvent, error) {
		x.CertSerial, x.CertDER, x.CertNotAfter = fmt.Sprintf("%x", leaf.SerialNumber), der, leaf.NotAfter
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, inter.Raw}, PrivateKey: key, Leaf: leaf}
}
