package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// run starts the whole service from flags and stops cleanly when its context
// ends (what SIGINT/SIGTERM do through signal.NotifyContext).
func TestRunStartsAndStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PROVISIOND_CA_PASSPHRASE", "env-passphrase-0123456789")
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--data", dir, "--coaps-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0", "--log-format", "json"}, &logs)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "server.json")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, f := range []string{"admin.token", "root.pem", "inventory.db", "ca/intermediate.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.passphrase")); err == nil {
		t.Error("a passphrase file was written although PROVISIOND_CA_PASSPHRASE was set")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if !strings.Contains(logs.String(), `"msg":"shutting down"`) {
		t.Errorf("logs: %s", logs.String())
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	cases := map[string][]string{
		"plain coap without flag": {"--coap-addr", ":5683"},
		"bad duration":            {"--cert-lifetime", "forever"},
		"bad log level":           {"--log-level", "loud"},
		"bad address":             {"--http-addr", "8443"},
		"stray argument":          {"serve"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(context.Background(), append([]string{"--data", t.TempDir()}, args...), &out); err == nil {
				t.Errorf("run(%v) succeeded", args)
			}
		})
	}
}
