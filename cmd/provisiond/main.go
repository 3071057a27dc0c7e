// Command provisiond is the device provisioning (bootstrap) server: devices
// enroll over CoAP/DTLS with a claim token and a CSR and receive a
// certificate from the embedded CA, their Wi-Fi and network config and an IP
// lease; operators use the HTTPS API (see provctl).
//
//	go run ./cmd/provisiond                    # embedded defaults in ./data
//	go run ./cmd/provisiond --data /var/lib/provisiond --advertise-host prov.example.net
//
// Every setting is a flag, a PROVISIOND_<FLAG> environment variable (upper
// case, dashes as underscores) and a key of the YAML file given with
// --config, in that order of precedence over the defaults; --print-config
// shows the effective settings. See config.go and docs/operations.md.
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
	"syscall"
	"time"

	"github.com/provisiond/provisiond/internal/gcheadroom"
	"github.com/provisiond/provisiond/internal/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "provisiond:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "migrate" {
		return migrate(ctx, args[1:], stdout, stderr)
	}
	cfg, o, err := loadConfig(args, stdout, stderr)
	if errors.Is(err, errPrinted) {
		return nil
	}
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}

	switch gogc := os.Getenv("GOGC"); {
	case gogc != "" && o.gcHeadroom > 0:
		log.Info("GOGC is set: the collector runs on it alone, without --gc-headroom", "GOGC", gogc)
	case o.gcHeadroom > 0:
		defer gcheadroom.Start(uint64(o.gcHeadroom), 100).Stop()
	}
	srv, err := server.Start(ctx, cfg, log)
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
