// Command devsim simulates a fleet of devices enrolling with provisiond, from
// the flash bundles that `provctl factory mint` wrote:
//
//	go run ./cmd/devsim --bundles ./batch1
//	go run ./cmd/devsim --bundles ./batch1 --concurrency 256 --json
//	go run ./cmd/devsim --bundles ./batch1 --transport mqtt
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// A load generator allocates a lot of short-lived handshake state;
		// collecting less often leaves more CPU for the server under test.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "devsim:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bundles := fs.String("bundles", "", "directory of flash bundles (<serial>.json) from provctl factory mint")
	server := fs.String("server", "", "override the bundles' CoAP endpoint: host:port or coaps://host:port")
	broker := fs.String("broker", "", "override the bundles' MQTT endpoint: host:port or mqtts://host:port")
	transport := fs.String("transport", "coap", "coap (DTLS), mqtt (TLS) or mix (alternating)")
	conc := fs.Int("concurrency", 64, "devices enrolling at once")
	format := fs.String("format", "cbor", "payload encoding: cbor or json")
	attempts := fs.Int("attempts", 3, "attempts per device (retries honour the server's Max-Age)")
	timeout := fs.Duration("timeout", 15*time.Second, "per attempt")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress line")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bundles == "" {
		return errors.New("--bundles DIR is required")
	}
	f := wire.CBOR
	switch *format {
	case "cbor":
	case "json":
		f = wire.JSON
	default:
		return fmt.Errorf("--format: %q is neither cbor nor json", *format)
	}
	list, err := simulator.LoadBundles(*bundles)
	if err != nil {
		return err
	}
	switch *transport {
	case "coap", "mqtt", "mix":
	default:
		return fmt.Errorf("--transport: %q is not coap, mqtt or mix", *transport)
	}
	opts := simulator.RunOptions{Concurrency: *conc, Transport: *transport, Endpoint: *server, Broker: *broker,
		Format: f, Attempts: *attempts, Timeout: *timeout}
	if !*quiet && !*asJSON {
		opts.Progress = stderr
	}
	_, sum := simulator.Run(ctx, list, opts)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, sum)
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d of %d devices failed to enroll", sum.Failed, sum.Devices)
	}
	return nil
}
