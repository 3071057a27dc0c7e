package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"
)

// run starts the whole service from flags and stops cleanly when its context
// ends (what SIGINT/SIGTERM do through signal.NotifyContext).
func TestRunStartsAndStopsCleanly(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("PROVISIOND_CA_PASSPHRASE", "env-passphrase-0123456789")
	var logs bytes.Buffer
	stop := startRun(t, dir, &logs, "--log-format", "json")
	for _, f := range []string{"admin.token", "root.pem", "inventory.db", "ca/intermediate.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.passphrase")); err == nil {
		t.Error("a passphrase file was written although PROVISIOND_CA_PASSPHRASE was set")
	}
	if err := stop(); err != nil {
		t.Fatalf("run returned %v", err)
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
			if err := run(context.Background(), append([]string{"--data", t.TempDir()}, args...), io.Discard, &out); err == nil {
				t.Errorf("run(%v) succeeded", args)
			}
		})
	}
}

// Every directory of the data dir is 0700 and every file 0600, except the
// public certificates and server.json (addresses and pid), which may be
// read by others but written by no one else. Unknown files must be 0600.
func TestDataDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	t.Setenv("PROVISIOND_CA_PASSPHRASE", "") // generated into ca.passphrase
	if err := startRun(t, dir, io.Discard)(); err != nil {
		t.Fatal(err)
	}
	public := map[string]bool{"root.pem": true, "server.json": true, "ca/root.pem": true, "ca/intermediate.pem": true}
	secrets := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		mode := st.Mode().Perm()
		switch {
		case d.IsDir():
			if mode != 0o700 {
				t.Errorf("directory %s: mode %v, want 0700", rel, mode)
			}
		case public[rel]:
			if mode&0o022 != 0 {
				t.Errorf("%s: mode %v, writable by others", rel, mode)
			}
		default:
			secrets++
			if mode != 0o600 {
				t.Errorf("%s: mode %v, want 0600", rel, mode)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if secrets < 5 { // ca.passphrase, admin.token, inventory.db, two CA keys
		t.Errorf("only %d private files checked", secrets)
	}
}

// waitUp waits for the server started on dir to write its server.json.
// startRun runs the service on dir with its listeners on free loopback
// ports (args add flags, or override these), its log to logs, and waits
// until it is up. stop cancels it and returns run's error.
func startRun(t *testing.T, dir string, logs io.Writer, args ...string) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--data", dir, "--coaps-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--mqtt-addr", "127.0.0.1:0"}, args...), io.Discard, logs)
	}()
	waitUp(t, dir)
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(15 * time.Second):
			return errors.New("run did not return 15 s after its context ended")
		}
	}
}

func waitUp(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, "server.json")); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gcPercent is the runtime's GC percent.
func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestRunGCHeadroom: a running provisiond raises the GC percent for its
// small heap (--gc-headroom) and puts it back when it stops; with GOGC in
// its environment it leaves the collector alone and says so.
func TestRunGCHeadroom(t *testing.T) {
	t.Setenv("PROVISIOND_CA_PASSPHRASE", "env-passphrase-0123456789")
	for _, gogc := range []string{"", "150"} {
		if gogc != "" {
			t.Setenv("GOGC", gogc) // read by run; the runtime read its own at start
		}
		var logs bytes.Buffer
		stop := startRun(t, t.TempDir(), &logs, "--log-format", "json")
		runtime.GC()
		time.Sleep(50 * time.Millisecond) // the tuner runs after the collection
		running := gcPercent()
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		stopped := gcPercent()
		said := strings.Contains(logs.String(), "GOGC is set")
		if gogc == "" && (running <= 100 || stopped != 100 || said) {
			t.Errorf("default: GC percent %d running, %d stopped (want over 100, then 100); GOGC message %v", running, stopped, said)
		}
		if gogc != "" && (running != 100 || !said) {
			t.Errorf("GOGC=%s: GC percent %d running (want 100, untouched); GOGC message %v", gogc, running, said)
		}
	}
}
