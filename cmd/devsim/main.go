// Command devsim simulates a fleet of devices enrolling with provisiond, from
// the flash bundles that `provctl factory mint` wrote:
//
//	go run ./cmd/devsim --bundles ./batch1
//	go run ./cmd/devsim --bundles ./batch1 --concurrency 256 --json
//	go run ./cmd/devsim --bundles ./batch1 --transport mqtt
//	go run ./cmd/devsim --mint 5000 --site hq --arrival ramp --rate 500 --ramp 20s
//	go run ./cmd/devsim --mint 10000 --site hq --transport mqtt --soak 2m --pushes 3 --revoke 100
//
// With --soak, the enrolled devices then stay online over MQTT (mutual
// TLS): they apply and acknowledge every config pushed to them, renew leases
// and certificates on schedule, and devsim pushes site configs and revokes
// devices through the ops API, reporting how fast each reached the devices.
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
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/lwm2m"
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
	mint := fs.Int("mint", 0, "instead of --bundles: mint this many devices through the ops API first")
	site := fs.String("site", "", "with --mint: pre-assign the devices to this site")
	model := fs.String("model", "SIM", "with --mint: the devices' model")
	data := fs.String("data", "", "with --mint: provisiond data directory (finds the API, token and CA; default ./data)")
	api := fs.String("api", os.Getenv("PROVCTL_SERVER"), "with --mint: API URL (env PROVCTL_SERVER)")
	tokenFile := fs.String("token-file", os.Getenv("PROVCTL_TOKEN_FILE"), "with --mint: API token file (an operator's)")
	caFile := fs.String("ca-file", os.Getenv("PROVCTL_CA_FILE"), "with --mint: root CA file")
	arrival := fs.String("arrival", "storm", "storm (all at once), rate (--rate per second) or ramp (0 to --rate over --ramp)")
	rate := fs.Float64("rate", 100, "devices per second for --arrival rate or ramp")
	ramp := fs.Duration("ramp", 10*time.Second, "ramp duration for --arrival ramp")
	maxWait := fs.Duration("max-wait", 0, "cap on waits between attempts (0: honour the server's hints)")
	server := fs.String("server", "", "override the bundles' CoAP endpoint: host:port or coaps://host:port")
	broker := fs.String("broker", "", "override the bundles' MQTT endpoint: host:port or mqtts://host:port")
	transport := fs.String("transport", "coap", "coap (DTLS), mqtt (TLS), est (EST over HTTPS), estcoaps (EST over CoAP/DTLS; needs --idevid), lwm2m (LwM2M bootstrap; needs --lwm2m-psk or --idevid, and a site with an LwM2M profile) or mix (coap and mqtt alternating)")
	lwPSK := fs.Bool("lwm2m-psk", false, "with --mint: give the devices LwM2M bootstrap PSKs (--transport lwm2m bootstraps with them)")
	lwFormat := fs.String("lwm2m-format", "", "with --transport lwm2m: the content-format the clients ask for: tlv, senml-cbor or senml-json (default none: TLV)")
	httpsEP := fs.String("https", "", "override the bundles' HTTPS (EST) endpoint: host:port or https://host:port")
	idevid := fs.Bool("idevid", false, "with --mint: give the devices factory certificates (IDevIDs) from a throwaway manufacturer CA registered for the batch; they enroll with them instead of claim tokens (est)")
	conc := fs.Int("concurrency", 64, "devices enrolling at once")
	format := fs.String("format", "cbor", "payload encoding: cbor or json")
	attempts := fs.Int("attempts", 3, "attempts per device (retries honour the server's Max-Age)")
	timeout := fs.Duration("timeout", 15*time.Second, "per attempt")
	soakFor := fs.Duration("soak", 0, "after enrolling, keep the devices online over MQTT this long (needs the ops API: --data or --api/--token-file)")
	pushes := fs.Int("pushes", 3, "with --soak: site-wide config pushes (PATCH of --site), spread over the soak")
	revoke := fs.Int("revoke", 10, "with --soak: devices revoked one by one at the end")
	leaseEvery := fs.Duration("renew-lease-every", time.Minute, "with --soak: each device renews its lease this often (0: never)")
	certEvery := fs.Duration("renew-cert-every", 0, "with --soak: each device renews its certificate this often (0: never)")
	serverDebug := fs.String("server-debug", "", "with --soak: the server's --debug-addr (host:port); once every device is online, have it collect three times and report its memory then")
	rssPID := fs.Int("rss-pid", 0, "with --soak: also report the resident memory of this process on this machine (an external MQTT broker's), read when the server's is")
	fwCoAP := fs.Bool("firmware-coap", false, "with --soak: download firmware targets over CoAP block-wise (default HTTPS)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	quiet := fs.Bool("quiet", false, "no progress line")
	pq := fs.Bool("pq", false, "devices offer the hybrid post-quantum TLS key exchange (X25519MLKEM768) as Go's TLS does by default; without: X25519 and P-256, as device TLS stacks such as mbedTLS offer")
	cpu := fs.Bool("cpu", false, "report the CPU time server and devsim spent per enrollment, against the server's public-key floor measured first (needs the ops API: --data or --api/--token-file)")
	cpuProfile := fs.String("cpu-profile", "", "write devsim's own CPU profile of the enrollments (go tool pprof) to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*bundles == "") == (*mint == 0) {
		return errors.New("give --bundles DIR or --mint N")
	}
	switch *arrival {
	case "storm", "rate", "ramp":
	default:
		return fmt.Errorf("--arrival: %q is not storm, rate or ramp", *arrival)
	}
	switch *transport {
	case "coap", "mqtt", "mix", "est", "estcoaps", "lwm2m":
	default:
		return fmt.Errorf("--transport: %q is not coap, mqtt, est, estcoaps, lwm2m or mix", *transport)
	}
	lwFormats := map[string]message.MediaType{"": 0, "tlv": lwm2m.FormatTLV, "senml-cbor": lwm2m.FormatSenMLCBOR, "senml-json": lwm2m.FormatSenMLJSON}
	lwf, ok := lwFormats[*lwFormat]
	if !ok {
		return fmt.Errorf("--lwm2m-format: %q is not tlv, senml-cbor or senml-json", *lwFormat)
	}
	if *transport == "lwm2m" && *soakFor > 0 {
		return errors.New("--soak does not follow --transport lwm2m: LwM2M devices go on to their management server, not to provisiond's MQTT")
	}
	f := wire.CBOR
	switch *format {
	case "cbor":
	case "json":
		f = wire.JSON
	default:
		return fmt.Errorf("--format: %q is neither cbor nor json", *format)
	}
	if *serverDebug != "" && *soakFor == 0 {
		return errors.New("--server-debug is read during --soak: give --soak too")
	}
	if *soakFor > 0 && *pushes > 0 && *site == "" {
		return errors.New("--soak with --pushes needs --site (the site whose config is pushed)")
	}
	var list []wire.Bundle
	var c *httpapi.Client
	if *mint > 0 || *soakFor > 0 || *cpu {
		var err error
		if c, err = httpapi.Connect(*api, *tokenFile, *caFile, *data); err != nil {
			return err
		}
	}
	if *mint > 0 {
		m, err := c.MintWith(ctx, httpapi.MintOptions{Model: *model, Count: *mint, Site: *site, LwM2MPSK: *lwPSK})
		if err != nil {
			return err
		}
		if *idevid {
			ca, err := mfr.New("devsim manufacturer CA")
			if err != nil {
				return err
			}
			if _, err := c.RegisterIDevIDs(ctx, &m, ca); err != nil {
				return err
			}
		}
		list = m.Bundles
		fmt.Fprintf(stderr, "minted %d devices (batch %s)\n", len(list), m.Batch.Batch.ID)
	} else {
		var err error
		if list, err = simulator.LoadBundles(*bundles); err != nil {
			return err
		}
	}
	opts := simulator.RunOptions{Concurrency: *conc, Transport: *transport, Endpoint: *server, Broker: *broker, HTTPS: *httpsEP,
		Format: f, LwM2MFormat: lwf, Attempts: *attempts, Timeout: *timeout, Arrival: *arrival, Rate: *rate, Ramp: *ramp, MaxWait: *maxWait, PQ: *pq}
	if !*quiet && !*asJSON {
		opts.Progress = stderr
	}
	var cpuR *cpuReport
	if *cpu {
		r, err := startCPU(ctx, c, *transport)
		if err != nil {
			return fmt.Errorf("--cpu: %w", err)
		}
		cpuR = &r
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
	}
	outs, sum := simulator.Run(ctx, list, opts)
	if *cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if cpuR != nil {
		r, err := cpuR.finish(ctx, c, sum.Enrolled)
		if err != nil {
			return fmt.Errorf("--cpu: %w", err)
		}
		cpuR = &r
	}
	var soaked *soakReport
	if *soakFor > 0 {
		r := soak(ctx, outs, soakPlan{duration: *soakFor, site: *site, pushes: *pushes, revocations: *revoke, api: c, rssPID: *rssPID, serverDebug: *serverDebug,
			opts: simulator.SoakOptions{Broker: *broker, Concurrency: *conc, LeaseEvery: *leaseEvery, CertEvery: *certEvery, FirmwareOverCoAP: *fwCoAP}}, opts.Progress)
		soaked = &r
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		out := struct {
			simulator.Summary
			CPU  *cpuReport  `json:"cpu,omitempty"`
			Soak *soakReport `json:"soak,omitempty"`
		}{sum, cpuR, soaked}
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(stdout, sum)
		if cpuR != nil {
			fmt.Fprintln(stdout, cpuR)
		}
		if soaked != nil {
			fmt.Fprintln(stdout, soaked)
		}
	}
	if sum.Failed > 0 {
		return fmt.Errorf("%d of %d devices failed to enroll", sum.Failed, sum.Devices)
	}
	if soaked != nil && len(soaked.Problems) > 0 {
		return fmt.Errorf("soak: %d problems, first: %s", len(soaked.Problems), soaked.Problems[0])
	}
	return nil
}
