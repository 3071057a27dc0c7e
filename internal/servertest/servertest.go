// Package servertest starts a real provisiond for tests: a fresh data
// directory under t.TempDir(), every listener on 127.0.0.1 port 0, an API
// client holding the admin token, and helpers to create sites and mint
// devices the way provctl does.
package servertest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/etcdtest"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// Env is a running server and a client for it.
type Env struct {
	T       testing.TB
	Server  *server.Server
	Client  *httpapi.Client
	DataDir string
	Info    httpapi.Info
	Config  server.Config
	// Clock is the server's clock: the system time plus what Advance added.
	Clock *Clock
	logs  *lockedBuffer
}

// Clock is the system clock moved forward by Advance, so that a test
// reaches a lease expiry or the end of a window without sleeping.
type Clock struct{ offset atomic.Int64 }

// Now is the system time plus the advances so far.
func (c *Clock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

// Logs returns everything the server logged so far (at debug level).
func (e *Env) Logs() string { return e.logs.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var storeSeq atomic.Int64

// Start runs provisiond until the test ends. mod may adjust the configuration.
func Start(t testing.TB, mod ...func(*server.Config)) *Env {
	t.Helper()
	cfg := server.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.CoAPSAddr, cfg.HTTPAddr, cfg.MQTTAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.AdvertiseHost = "127.0.0.1"
	cfg.CAPassphrase = "test-passphrase-0123456789"
	clock := &Clock{}
	cfg.Clock = clock
	if c := etcdtest.Shared(); c != nil {
		// PROVISIOND_TEST_STORE=etcd: the inventory in a keyspace of its
		// own on the package's etcd.
		cfg.Store = fmt.Sprintf("%s/servertest-%d", c.URL(), storeSeq.Add(1))
	}
	for _, m := range mod {
		m(&cfg)
	}
	logs := &lockedBuffer{}
	srv, err := server.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(tWriter{t: t, copy: logs, gate: newLogGate(t)}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("start provisiond: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	token, err := os.ReadFile(filepath.Join(cfg.DataDir, server.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := httpapi.NewClient("https://"+srv.HTTPAddr().String(), string(token), srv.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &Env{T: t, Server: srv, Client: c, DataDir: cfg.DataDir, Info: info, Config: cfg, Clock: clock, logs: logs}
}

// Logger writes the server's logs through t.Log at debug level, visible with -v or on failure.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t: t, gate: newLogGate(t)}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter writes log lines through t.Log and, when copy is set, keeps them
// (for Env.Logs). Once the test's cleanups are done it drops lines: a
// library goroutine (mochi's event loop) may still log after its server
// has shut down, and t.Log after the test is over is a data race.
type tWriter struct {
	t    testing.TB
	copy *lockedBuffer
	gate *logGate
}

// logGate closes a tWriter when its test ends.
type logGate struct {
	mu     sync.Mutex
	closed bool
}

func newLogGate(t testing.TB) *logGate {
	g := &logGate{}
	t.Cleanup(func() { // registered first: runs after every other cleanup
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
	})
	return g
}

func (w tWriter) Write(p []byte) (int, error) {
	if _, fuzzing := w.t.(*testing.F); fuzzing {
		// A fuzz target may not log through F, and a long fuzz run would
		// pile up logs: a fuzzed server's logs are dropped.
		return len(p), nil
	}
	if w.gate != nil {
		w.gate.mu.Lock()
		defer w.gate.mu.Unlock()
		if w.gate.closed {
			return len(p), nil
		}
	}
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	if w.copy != nil {
		_, _ = w.copy.Write(p)
	}
	return len(p), nil
}

// Site creates a site with the given CIDR.
func (e *Env) Site(name, cidr string) httpapi.SiteView {
	e.T.Helper()
	ssid, sec, pass := "ssid-"+name, "wpa2-psk", "passphrase-"+name
	var v httpapi.SiteView
	err := e.Client.Do(context.Background(), "POST", "/api/v1/sites", httpapi.SiteRequest{
		Name: &name, SSID: &ssid, Security: &sec, Passphrase: &pass, CIDR: &cidr,
		DNS: &[]string{"192.0.2.53"}, NTP: &[]string{"ntp.example.net"},
	}, &v)
	if err != nil {
		e.T.Fatalf("create site %s: %v", name, err)
	}
	return v
}

// Mint registers n devices of model TEST (pre-assigned to site when not
// empty) and returns their flash bundles, as `provctl factory mint` does.
func (e *Env) Mint(n int, site string) []wire.Bundle {
	e.T.Helper()
	m, err := e.Client.Mint(context.Background(), "TEST", n, site)
	if err != nil {
		e.T.Fatalf("mint: %v", err)
	}
	return m.Bundles
}

// AdminToken is the bootstrap admin token (what Client uses), for a
// browser or another client.
func (e *Env) AdminToken() string {
	e.T.Helper()
	raw, err := os.ReadFile(filepath.Join(e.DataDir, server.AdminTokenFile))
	if err != nil {
		e.T.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

// AddFirmware adds an image to the catalogue, as provctl firmware add does.
func (e *Env) AddFirmware(model, version string, image []byte) httpapi.FirmwareAdded {
	e.T.Helper()
	var added httpapi.FirmwareAdded
	if err := e.Client.DoRaw(context.Background(), "POST", "/api/v1/firmware?model="+model+"&version="+version,
		"application/octet-stream", bytes.NewReader(image), &added); err != nil {
		e.T.Fatalf("add firmware %s %s: %v", model, version, err)
	}
	return added
}

// MQTTS is the embedded broker's TLS endpoint as a URL.
func (e *Env) MQTTS() string { return "mqtts://" + e.Server.MQTTAddr() }

// CoAPS is the DTLS endpoint, host:port.
func (e *Env) CoAPS() string { return e.Server.CoAPSAddr().String() }
