// Command provisiond is the device provisioning (bootstrap) server: devices
// enroll over CoAP/DTLS with a claim token and a CSR and receive a
// certificate from the embedded CA, their Wi-Fi and network config and an IP
// lease; operators use the HTTPS API (see provctl).
//
//	go run ./cmd/provisiond                    # embedded defaults in ./data
//	go run ./cmd/provisiond --data /var/lib/provisiond --advertise-host prov.example.net
//
// Every flag can also be set through the environment variable named in its
// help text (PROVISIOND_<FLAG>, upper case, dashes as underscores).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/provisiond/provisiond/internal/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "provisiond:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg := server.Defaults()
	fs := flag.NewFlagSet("provisiond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := func(name, def string) string {
		if v, ok := os.LookupEnv("PROVISIOND_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); ok {
			return v
		}
		return def
	}
	str := func(p *string, name, usage string) {
		fs.StringVar(p, name, env(name, *p), usage+" (env PROVISIOND_"+strings.ToUpper(strings.ReplaceAll(name, "-", "_"))+")")
	}
	str(&cfg.DataDir, "data", "data directory: inventory, CA, admin token")
	str(&cfg.CoAPSAddr, "coaps-addr", "CoAP over DTLS listen address (empty disables)")
	str(&cfg.CoAPAddr, "coap-addr", "plain CoAP listen address; needs --insecure-coap")
	str(&cfg.HTTPAddr, "http-addr", "HTTPS ops API listen address")
	str(&cfg.MQTTAddr, "mqtt-addr", "embedded MQTT broker, MQTT over TLS (empty disables)")
	str(&cfg.MQTTPlainAddr, "mqtt-plain-addr", "embedded broker, plain MQTT; needs --insecure-mqtt")
	str(&cfg.MQTTBroker, "mqtt-broker", "use this external broker (mqtts://host:port) instead of the embedded one")
	str(&cfg.MQTTBootstrap, "mqtt-bootstrap-url", "with --mqtt-broker: the URL devices bootstrap on, if not the same (goes into flash bundles)")
	str(&cfg.MQTTCAFile, "mqtt-ca-file", "PEM roots for the external broker's certificate (default: provisiond's root)")
	str(&cfg.MQTTClientID, "mqtt-client-id", "this replica's client ID on the external broker (default provisiond-<hostname>)")
	str(&cfg.AdvertiseHost, "advertise-host", "host name or IP devices use to reach this server")
	str(&cfg.DebugAddr, "debug-addr", "serve net/http/pprof here, e.g. 127.0.0.1:6060 (no authentication: keep it on loopback)")
	str(&cfg.CertTemplate, "cert-template", "x509util template file for device certificates (default built in)")
	names := env("server-names", "")
	fs.StringVar(&names, "server-names", names, "extra comma-separated DNS names/IPs in the server certificate (env PROVISIOND_SERVER_NAMES)")
	insecure := env("insecure-coap", "false") == "true"
	fs.BoolVar(&insecure, "insecure-coap", insecure, "also serve plain CoAP (development only; default address :5683)")
	insecureMQTT := env("insecure-mqtt", "false") == "true"
	fs.BoolVar(&insecureMQTT, "insecure-mqtt", insecureMQTT, "also serve plain MQTT (development only; default address :1883)")
	lifetime := env("cert-lifetime", cfg.CertLifetime.String())
	fs.StringVar(&lifetime, "cert-lifetime", lifetime, "device certificate lifetime (env PROVISIOND_CERT_LIFETIME)")
	retry := env("retry-window", "10m")
	fs.StringVar(&retry, "retry-window", retry, "a device re-sending the same key within this gets the same answer (env PROVISIOND_RETRY_WINDOW)")
	maxInFlight := env("max-inflight", "256")
	fs.StringVar(&maxInFlight, "max-inflight", maxInFlight, "enrollments processed at once; more are answered 5.03 with a retry hint (env PROVISIOND_MAX_INFLIGHT)")
	maxHandshakes := env("max-handshakes", "64")
	fs.StringVar(&maxHandshakes, "max-handshakes", maxHandshakes, "DTLS handshakes worked on at once; more wait up to 5s for a slot, then are dropped (env PROVISIOND_MAX_HANDSHAKES)")
	logLevel := env("log-level", "info")
	fs.StringVar(&logLevel, "log-level", logLevel, "debug, info, warn or error (env PROVISIOND_LOG_LEVEL)")
	logFormat := env("log-format", "text")
	fs.StringVar(&logFormat, "log-format", logFormat, "text or json (env PROVISIOND_LOG_FORMAT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var err error
	if cfg.CertLifetime, err = time.ParseDuration(lifetime); err != nil {
		return fmt.Errorf("cert-lifetime: %w", err)
	}
	if cfg.Enroll.RetryWindow, err = time.ParseDuration(retry); err != nil {
		return fmt.Errorf("retry-window: %w", err)
	}
	if cfg.Enroll.MaxInFlight, err = strconv.Atoi(maxInFlight); err != nil || cfg.Enroll.MaxInFlight < 1 {
		return fmt.Errorf("max-inflight: %q is not a positive number", maxInFlight)
	}
	if cfg.MaxHandshakes, err = strconv.Atoi(maxHandshakes); err != nil || cfg.MaxHandshakes < 1 {
		return fmt.Errorf("max-handshakes: %q is not a positive number", maxHandshakes)
	}
	cfg.InsecureCoAP = insecure
	if insecure && cfg.CoAPAddr == "" {
		cfg.CoAPAddr = ":5683"
	}
	cfg.InsecureMQTT = insecureMQTT
	if insecureMQTT && cfg.MQTTPlainAddr == "" && cfg.MQTTBroker == "" {
		cfg.MQTTPlainAddr = ":1883"
	}
	if names != "" {
		cfg.ServerNames = strings.Split(names, ",")
	}
	log, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		return err
	}

	srv, err := server.Start(cfg, log)
	if err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-srv.Err():
		log.Error("listener failed", "err", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(err, srv.Shutdown(shutdownCtx))
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format: %q is neither text nor json", format)
}
