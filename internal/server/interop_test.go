package server_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/testtools"

	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
)

// TestInteropLibcoap enrolls with tools that are not ours, using only what
// docs/protocol.md says: OpenSSL makes the key and CSR, libcoap's
// coap-client posts the JSON request over DTLS, OpenSSL verifies the chain.
func TestInteropLibcoap(t *testing.T) {
	coap := testtools.Need(t, "coap-client-openssl")
	openssl := testtools.Need(t, "openssl")
	env := servertest.Start(t)
	env.Site("lab", "192.168.50.0/24")
	b := env.Mint(1, "lab")[0]
	dir := t.TempDir()
	run := func(name string, args ...string) []byte { t.Helper(); return runIn(t, dir, name, args...) }
	run(openssl, "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "key.pem")
	run(openssl, "req", "-new", "-key", "key.pem", "-subj", "/CN=anything", "-out", "csr.pem")
	csr, _ := os.ReadFile(filepath.Join(dir, "csr.pem"))
	body, _ := json.Marshal(map[string]string{"serial": b.Serial, "claim_token": b.ClaimToken, "csr": string(csr)})
	os.WriteFile(filepath.Join(dir, "body.json"), body, 0o600)
	root := filepath.Join(env.DataDir, server.RootFile)
	url := "coaps://" + env.CoAPS()

	out := run(coap, "-m", "post", "-t", "50", "-A", "50", "-f", "body.json", "-R", root, "-B", "10", url+"/enroll")
	var res struct {
		DeviceID    string                   `json:"device_id"`
		Certificate string                   `json:"certificate"`
		CA          string                   `json:"ca"`
		Network     struct{ Address string } `json:"network"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("answer is not the documented JSON: %v\n%s", err, out)
	}
	if res.DeviceID == "" || !strings.HasPrefix(res.Network.Address, "192.168.50.") {
		t.Fatalf("answer %s", out)
	}
	blocks := strings.SplitAfter(res.Certificate, "-----END CERTIFICATE-----\n")
	os.WriteFile(filepath.Join(dir, "leaf.pem"), []byte(blocks[0]), 0o600)
	os.WriteFile(filepath.Join(dir, "chain.pem"), []byte(blocks[1]), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(res.CA), 0o600)
	if v := run(openssl, "verify", "-CAfile", "ca.pem", "-untrusted", "chain.pem", "leaf.pem"); !strings.Contains(string(v), "leaf.pem: OK") {
		t.Errorf("openssl verify: %s", v)
	}
	// The certificate is for the key OpenSSL made.
	if a, b := run(openssl, "x509", "-in", "leaf.pem", "-noout", "-pubkey"), run(openssl, "pkey", "-in", "key.pem", "-pubout"); string(a) != string(b) {
		t.Error("issued certificate does not certify the CSR's key")
	}
	// GET /ca answers the DER root (content-format 287).
	run(coap, "-m", "get", "-R", root, "-B", "5", "-o", "ca.der", url+"/ca")
	der, _ := os.ReadFile(filepath.Join(dir, "ca.der"))
	if string(der) != string(env.Server.CA().Root().Raw) {
		t.Errorf("GET /ca returned %d bytes, not the DER root", len(der))
	}
}

// TestInteropMosquittoRR bootstraps over MQTT with Mosquitto's stock
// request/response client and OpenSSL, using only docs/protocol.md.
func TestInteropMosquittoRR(t *testing.T) {
	rr := testtools.Need(t, "mosquitto_rr")
	openssl := testtools.Need(t, "openssl")
	env := servertest.Start(t)
	env.Site("lab", "192.168.50.0/24")
	b := env.Mint(1, "lab")[0]
	dir := t.TempDir()
	for _, args := range [][]string{
		{"ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", "key.pem"},
		{"req", "-new", "-key", "key.pem", "-subj", "/CN=anything", "-out", "csr.pem"},
	} {
		cmd := exec.Command(openssl, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	csr, _ := os.ReadFile(filepath.Join(dir, "csr.pem"))
	body, _ := json.Marshal(map[string]string{"serial": b.Serial, "claim_token": b.ClaimToken, "csr": string(csr)})
	cid := "boot-" + strings.Repeat("x7", 12)
	_, port, _ := strings.Cut(env.Server.MQTTAddr(), "127.0.0.1:")
	out, err := exec.Command(rr, "-h", "127.0.0.1", "-p", port, "--cafile", filepath.Join(env.DataDir, server.RootFile),
		"-i", cid, "-t", "bootstrap/"+cid+"/enroll/json", "-e", "bootstrap/"+cid+"/result", "-m", string(body), "-W", "10").Output()
	if err != nil {
		t.Fatalf("mosquitto_rr: %v\n%s", err, out)
	}
	var reply struct {
		Status     string `json:"status"`
		Enrollment struct {
			DeviceID    string `json:"device_id"`
			Certificate string `json:"certificate"`
		} `json:"enrollment"`
	}
	if err := json.Unmarshal(out, &reply); err != nil || reply.Status != "2.01" || reply.Enrollment.DeviceID == "" {
		t.Fatalf("reply %s (%v)", out, err)
	}
	os.WriteFile(filepath.Join(dir, "chain.pem"), []byte(reply.Enrollment.Certificate), 0o600)
	if v, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(env.DataDir, server.RootFile), "-untrusted",
		filepath.Join(dir, "chain.pem"), filepath.Join(dir, "chain.pem")).CombinedOutput(); err != nil || !strings.Contains(string(v), ": OK") {
		t.Errorf("openssl verify: %v %s", err, v)
	}
}

// runIn runs a tool in dir and returns its standard output; a failure fails
// the test with what the tool printed.
func runIn(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return out
}
