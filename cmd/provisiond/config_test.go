package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/server"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "provisiond.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigPrecedence: a flag beats its environment variable, which beats
// the config file, which beats the default.
func TestConfigPrecedence(t *testing.T) {
	file := writeConfig(t, "retry-window: 3m\nmax-failures: 7\njob-chunk: 11\nallow-p384: true\nserver-names: a.example,10.1.2.3\n")
	t.Setenv("PROVISIOND_MAX_FAILURES", "8")
	t.Setenv("PROVISIOND_JOB_CHUNK", "9")
	cfg, _, err := loadConfig([]string{"--config", file, "--job-chunk", "12"}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	def := server.Defaults()
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"retry-window from the file", cfg.Enroll.RetryWindow, 3 * time.Minute},
		{"max-failures from the environment", cfg.Enroll.MaxFailures, 8},
		{"job-chunk from the flag", cfg.Fleet.JobChunk, 12},
		{"allow-p384 from the file", cfg.Enroll.AllowP384, true},
		{"server-names from the file", strings.Join(cfg.ServerNames, " "), "a.example 10.1.2.3"},
		{"pool-retry by default", cfg.Enroll.PoolRetry, def.Enroll.PoolRetry},
		{"data by default", cfg.DataDir, def.DataDir},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Errorf("got %v, want %v", c.got, c.want)
			}
		})
	}
}

// TestConfigErrorsNameTheSetting: a bad value anywhere is refused with the
// setting's name.
func TestConfigErrorsNameTheSetting(t *testing.T) {
	cases := []struct {
		name, file string
		env        map[string]string
		args       []string
		want       string
	}{
		{"unknown key in the file", "retry-windw: 3m\n", nil, nil, "retry-windw"},
		{"duration in the file", "throttle-max: soon\n", nil, nil, "throttle-max"},
		{"base longer than max", "throttle-base: 2h\nthrottle-max: 1h\n", nil, nil, "throttle-base"},
		{"number in the environment", "", map[string]string{"PROVISIOND_MAX_HANDSHAKES": "many"}, nil, "max-handshakes"},
		{"zero handshakes", "", map[string]string{"PROVISIOND_MAX_HANDSHAKES": "0"}, nil, "max-handshakes"},
		{"boolean in the environment", "", map[string]string{"PROVISIOND_INSECURE_COAP": "perhaps"}, nil, "insecure-coap"},
		{"flag duration", "", nil, []string{"--cert-lifetime", "forever"}, "cert-lifetime"},
		{"short lifetime", "", nil, []string{"--cert-lifetime", "5m"}, "cert-lifetime"},
		{"negative chunk", "", nil, []string{"--job-chunk", "-1"}, "job-chunk"},
		{"tiny CSR limit", "max-csr-bytes: 10\n", nil, nil, "max-csr-bytes"},
		{"bad server name", "", nil, []string{"--server-names", "bad name!"}, "server-names"},
		{"plain CoAP without its flag", "", nil, []string{"--coap-addr", ":5683"}, "coap-addr"},
		{"bad load balancer", "", nil, []string{"--lb-addrs", "10.0.0.5,nginx"}, "lb-addrs"},
		{"short audit retention", "", nil, []string{"--audit-retention", "1h"}, "audit-retention"},
		{"store that is not etcd", "", nil, []string{"--store", "redis://r:6379"}, "store"},
		{"etcd host without a port", "store: etcd://e1\n", nil, nil, "store"},
		{"size that is not one", "", nil, []string{"--gc-headroom", "lots"}, "gc-headroom"},
		{"negative size", "gc-headroom: -5MiB\n", nil, nil, "gc-headroom"},
		{"missing config file", "", nil, []string{"--config", "/nonexistent/provisiond.yaml"}, "provisiond.yaml"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			args := c.args
			if c.file != "" {
				args = append([]string{"--config", writeConfig(t, c.file)}, args...)
			}
			_, _, err := loadConfig(args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one naming %q", err, c.want)
			}
		})
	}
}

// TestEverySettingIsLive: each setting changes the configuration it is
// read into (no flag is a dead knob).
func TestEverySettingIsLive(t *testing.T) {
	values := map[string]string{
		"data": "/srv/prov", "coaps-addr": "127.0.0.1:1", "coap-addr": "127.0.0.1:2", "http-addr": "127.0.0.1:3",
		"mqtt-addr": "127.0.0.1:4", "mqtt-plain-addr": "127.0.0.1:5", "mqtt-broker": "mqtts://b:8883",
		"mqtt-bootstrap-url": "mqtts://c:8883", "mqtt-ca-file": "/ca.pem", "mqtt-client-id": "r1", "advertise-host": "p.example",
		"server-names": "x.example", "ca-passphrase": "0123456789abcdef", "cert-lifetime": "48h", "cert-template": "/t.tpl",
		"max-handshakes": "7", "store-batch-wait": "5ms", "handshake-wait": "2s", "handshake-timeout": "3s", "idle-timeout": "90s", "job-chunk": "3", "debug-addr": "127.0.0.1:6060",
		"lwm2m-endpoint": "urn:dev:ops:{serial}", "lwm2m-timeout": "45s", "lwm2m-addr": "127.0.0.1:0",
		"ocsp-addr": "127.0.0.1:8080", "dhcp-interface": "eth9", "dhcp-addr": "127.0.0.1:67", "dhcp-server-ip": "192.0.2.9",
		"retry-window": "1m", "not-claimed-retry": "1m", "pool-retry": "1m", "max-failures": "2", "failure-window": "1m",
		"throttle-base": "1s", "throttle-max": "2h", "max-csr-bytes": "4096", "max-field-bytes": "32", "max-inflight": "9",
		"overload-retry": "1s", "store": "etcds://e1:2379,e2:2379", "etcd-ca": "/e/ca.pem", "etcd-cert": "/e/c.pem",
		"etcd-key": "/e/c.key", "audit-retention": "8760h", "lb-addrs": "10.0.0.5,10.0.1.0/24", "etcd-username": "prov", "etcd-password": "pw",
	}
	bools := map[string]bool{"insecure-coap": true, "insecure-mqtt": true, "allow-p384": true, "allow-ed25519": true}
	base, _, err := loadConfig(nil, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fs := newFlags(&server.Config{}, &options{}, io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		switch f.Name {
		case "config", "print-config", "log-level", "log-format", "gc-headroom": // not server settings (TestGCHeadroom)
			return
		}
		t.Run(f.Name, func(t *testing.T) {
			args := []string{"--" + f.Name + "=" + values[f.Name]}
			if bools[f.Name] {
				args = []string{"--" + f.Name}
			} else if values[f.Name] == "" {
				t.Fatalf("no test value for --%s", f.Name)
			}
			// What some settings need beside them to pass validation.
			args = append(args, "--insecure-coap", "--insecure-mqtt")
			cfg, _, err := loadConfig(args, io.Discard, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			withInsecure, _, _ := loadConfig([]string{"--insecure-coap", "--insecure-mqtt"}, io.Discard, io.Discard)
			if f.Name == "insecure-coap" || f.Name == "insecure-mqtt" {
				withInsecure = base
			}
			if reflect.DeepEqual(cfg, withInsecure) {
				t.Errorf("--%s changes nothing", f.Name)
			}
		})
	})
}

// TestPrintConfig: --print-config writes a config file of the effective
// settings, without secrets, that gives the same settings back.
func TestPrintConfig(t *testing.T) {
	t.Setenv("PROVISIOND_CA_PASSPHRASE", "secret-passphrase-0123")
	t.Setenv("PROVISIOND_RETRY_WINDOW", "7m")
	var out bytes.Buffer
	if _, _, err := loadConfig([]string{"--print-config", "--max-failures", "9", "--server-names", "a.example,b.example", "--lb-addrs", "10.0.0.5,10.0.1.0/24"}, &out, io.Discard); err != errPrinted {
		t.Fatalf("print-config: %v", err)
	}
	text := out.String()
	if strings.Contains(text, "secret-passphrase") || !strings.Contains(text, "# ca-passphrase: (set, not shown)") {
		t.Fatalf("printed config shows or forgets the secret:\n%s", text)
	}
	for _, want := range []string{"retry-window: 7m0s\n", "max-failures: 9\n", "allow-p384: false\n", "server-names: a.example,b.example\n", "lb-addrs: 10.0.0.5/32,10.0.1.0/24\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("printed config lacks %q:\n%s", want, text)
		}
	}
	os.Unsetenv("PROVISIOND_RETRY_WINDOW")
	again, _, err := loadConfig([]string{"--config", writeConfig(t, text)}, io.Discard, io.Discard)
	if err != nil {
		t.Fatalf("the printed config does not load: %v\n%s", err, text)
	}
	want, _, _ := loadConfig([]string{"--max-failures", "9", "--server-names", "a.example,b.example", "--retry-window", "7m", "--lb-addrs", "10.0.0.5,10.0.1.0/24"}, io.Discard, io.Discard)
	if !reflect.DeepEqual(again, want) {
		t.Errorf("round trip: %+v\nwant %+v", again, want)
	}
}

// TestGCHeadroom: --gc-headroom reads sizes from the flag, the environment
// and the file, defaults to 64 MiB, and prints back as it was given.
func TestGCHeadroom(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  string
		want uint64
		text string
	}{
		{nil, "", 64 << 20, "64MiB"},
		{[]string{"--gc-headroom", "0"}, "", 0, "0"},
		{[]string{"--gc-headroom", "128MiB"}, "1GiB", 128 << 20, "128MiB"},
		{nil, "1GiB", 1 << 30, "1GiB"},
		{[]string{"--gc-headroom=200MB"}, "", 200e6, "200000000"},
		{[]string{"--gc-headroom", "1536KiB"}, "", 1536 << 10, "1536KiB"},
		{[]string{"--gc-headroom", "4096"}, "", 4096, "4KiB"},
	} {
		if c.env != "" {
			t.Setenv("PROVISIOND_GC_HEADROOM", c.env)
		} else {
			os.Unsetenv("PROVISIOND_GC_HEADROOM")
		}
		_, o, err := loadConfig(c.args, io.Discard, io.Discard)
		if err != nil {
			t.Fatalf("%v (env %q): %v", c.args, c.env, err)
		}
		if uint64(o.gcHeadroom) != c.want || o.gcHeadroom.String() != c.text {
			t.Errorf("%v (env %q): %d bytes, %q; want %d, %q", c.args, c.env, o.gcHeadroom, o.gcHeadroom.String(), c.want, c.text)
		}
		var out bytes.Buffer
		if _, _, err := loadConfig(append([]string{"--print-config"}, c.args...), &out, io.Discard); err != errPrinted {
			t.Fatal(err)
		}
		os.Unsetenv("PROVISIOND_GC_HEADROOM") // it would override the file
		_, again, err := loadConfig([]string{"--config", writeConfig(t, out.String())}, io.Discard, io.Discard)
		if err != nil || again.gcHeadroom != o.gcHeadroom {
			t.Errorf("%v: printed config gives %d bytes (%v), want %d", c.args, again.gcHeadroom, err, o.gcHeadroom)
		}
	}
}
