// Command provctl is the operations, factory and installer CLI for
// provisiond, a thin client of its HTTPS API.
//
//	provctl --data ./data site create hq --ssid Office --security wpa2-psk --passphrase '…' --cidr 10.20.0.0/24
//	provctl --data ./data factory mint --model TH1 --count 100 --site hq --out ./batch1
//	provctl --data ./data devices list --site hq -o json
//
// It finds the server through --server URL --token-file FILE --ca-file FILE
// (or PROVCTL_SERVER, PROVCTL_TOKEN_FILE, PROVCTL_CA_FILE), or through
// --data DIR alone when it runs beside the server (default ./data).
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
	"strings"
	"syscall"

	"github.com/provisiond/provisiond/transport/httpapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "provctl:", err)
		os.Exit(1)
	}
}

const usage = `usage: provctl [global flags] COMMAND ...

commands:
  site create NAME --ssid S --security wpa2-psk|wpa3-sae --passphrase P --cidr CIDR [--gateway IP --dns IP,IP --ntp HOST,HOST --lease 24h]
                                     [--per-device-psk true: wpa2-psk, each device its own passphrase, served to RADIUS by MAC]
                                     [--lwm2m-server coaps://H:P [--lwm2m-server-id N --lwm2m-lifetime S --lwm2m-binding U --lwm2m-security certificate|est|psk --lwm2m-wifi true]]
  site list | site show NAME | site update NAME [same flags as create] | site delete NAME
  factory mint --model M --count N [--site S] [--idevid [--mfr-ca DIR]] [--lwm2m-psk] --out DIR
                                     --idevid: factory certificates too, from DIR's manufacturer CA (a throwaway one in OUT/mfr-ca when absent)
                                     --lwm2m-psk: an LwM2M bootstrap PSK per device (identity: the endpoint name)
  factory ca add FILE --model M [--batch B] [--auto-register [--site S]] [--allow-expired] [--serial-fields serialNumber,CN]
  factory ca list | factory ca remove ID
  factory import FILE [--model M] [--site S]
  factory labels DIR                 QR labels (PNG, SVG, A4 sheets) from DIR/labels.csv into DIR/labels/
  claim CODE --site S                an installer binds a device (label code or its URL) to a site
  devices list [--site S] [--state STATE] [--model M] [--firmware V] [--batch B] [--seen-within D] [--not-seen-within D] [--limit N] [--after ID]
  devices configure [SERIAL|ID ...] [--site S] [--batch B] [--ssid S --security X --passphrase P --dns IP,IP --ntp H,H | --clear]
  devices show SERIAL|ID | devices history SERIAL|ID | devices export [--format csv|json] [same filters as list]
  devices rebootstrap SERIAL|ID      let a provisioned device's next LwM2M bootstrap through (fresh credentials)
  devices lwm2m-credentials [SERIAL|ID] [--format csv|json] [same filters as list]
                                     the management-server PSKs LwM2M bootstraps gave (psk mode), for the LwM2M server
  audit [--before ID | --after ID] [--limit N]   newest first; --before pages back
  audit export [--out FILE]          the whole log as JSON lines, and its head hash
  audit verify [FILE] [--head HASH]  check the hash chain: on the server, or of an export
  cert server --name HOST[,HOST] [--ip IP,IP] [--lifetime 8760h] --out DIR   (for an external MQTT broker)
  revoke [SERIAL|ID ...] [--site S] [--batch B] --reason R
  jobs [ID]                          bulk operations (revocations, reconfigurations, retargets) and their progress
  reopen SERIAL|ID [--out FILE]      a revoked device gets a fresh claim token (and flash bundle)
  backup FILE                        online backup (tar: inventory snapshot + CA); see docs/operations.md to restore
  firmware add FILE --model M --version V [--min-bootloader V] [--min-hardware V] [--notes TEXT]
  firmware list | firmware rollout --model M --version V [--site S] [--percent P]
  firmware pause|resume|abort --model M [--site S] | firmware pin SERIAL|ID --version V
  token create NAME --role admin|operator|installer|viewer|radius [--sites S,S] | token list | token revoke ID
  info
  cluster status                     replicas sharing the inventory in etcd, the elected one, etcd health and size
  completion bash|zsh|fish           a shell completion script: source <(provctl completion bash)

global flags:
`

// env is a CLI's view of the world, passed in for tests.
type env struct {
	ctx    context.Context
	out    io.Writer
	json   bool
	client *httpapi.Client
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("provctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	srv := fs.String("server", os.Getenv("PROVCTL_SERVER"), "API URL, https://host:port (env PROVCTL_SERVER)")
	tokenFile := fs.String("token-file", os.Getenv("PROVCTL_TOKEN_FILE"), "file holding the API token (env PROVCTL_TOKEN_FILE)")
	caFile := fs.String("ca-file", os.Getenv("PROVCTL_CA_FILE"), "root CA to trust for the server (env PROVCTL_CA_FILE)")
	data := fs.String("data", "", "provisiond data directory: fills whatever of --server, --token-file, --ca-file is unset (default ./data)")
	output := fs.String("o", "text", "output: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return flag.ErrHelp
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("-o: %q is neither text nor json", *output)
	}
	if fs.Arg(0) == "completion" { // needs no server
		if fs.NArg() != 2 {
			return errors.New("completion: bash, zsh or fish")
		}
		return completion(stdout, fs.Arg(1))
	}
	client, err := connect(*srv, *tokenFile, *caFile, *data)
	if err != nil {
		return err
	}
	e := &env{ctx: ctx, out: stdout, json: *output == "json", client: client}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	sub := ""
	if len(rest) > 0 {
		sub = rest[0]
	}
	switch {
	case cmd == "site" && sub != "":
		return e.site(sub, rest[1:], stderr)
	case cmd == "factory" && sub == "mint":
		return e.mint(rest[1:], stderr)
	case cmd == "factory" && sub == "ca" && len(rest) > 1:
		return e.factoryCA(rest[1], rest[2:], stderr)
	case cmd == "factory" && sub == "labels":
		return e.renderLabels(rest[1:])
	case cmd == "factory" && sub == "import":
		return e.importFile(rest[1:], stderr)
	case cmd == "devices" && sub != "":
		return e.devices(sub, rest[1:], stderr)
	case cmd == "cert" && sub == "server":
		return e.serverCert(rest[1:], stderr)
	case cmd == "audit" && sub == "export":
		return e.auditExport(rest[1:], stderr)
	case cmd == "audit" && sub == "verify":
		return e.auditVerify(rest[1:], stderr)
	case cmd == "audit":
		return e.audit(rest, stderr)
	case cmd == "claim":
		return e.claim(rest, stderr)
	case cmd == "backup":
		return e.backupTo(rest)
	case cmd == "revoke":
		return e.revoke(rest, stderr)
	case cmd == "reopen":
		return e.reopen(rest, stderr)
	case cmd == "jobs":
		return e.jobs(rest, stderr)
	case cmd == "cluster" && sub == "status":
		return e.clusterStatus(rest[1:])
	case cmd == "token" && sub != "":
		return e.token(sub, rest[1:], stderr)
	case cmd == "firmware" && sub != "":
		return e.firmware(sub, rest[1:], stderr)
	case cmd == "info":
		info, err := client.Info(ctx)
		if err != nil {
			return err
		}
		return e.print(info, func(w io.Writer) {
			fmt.Fprintf(w, "version:   %s\nendpoints: %s\n", info.Version, strings.Join(info.Endpoints, " "))
		})
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", strings.Join(fs.Args()[:min(2, fs.NArg())], " "))
}

func connect(srv, tokenFile, caFile, data string) (*httpapi.Client, error) {
	return httpapi.Connect(srv, tokenFile, caFile, data)
}

func (e *env) print(v any, text func(w io.Writer)) error {
	if e.json {
		enc := json.NewEncoder(e.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(e.out)
	return nil
}

// parse parses flags that may come after positional arguments (provctl site
// show NAME --flag): it returns the positionals.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
