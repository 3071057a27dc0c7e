package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/provisiond/provisiond/internal/atomicfile"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/labels"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

func (e *env) site(sub string, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("site "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	set := map[string]*string{}
	for _, f := range []struct{ name, usage string }{
		{"ssid", "Wi-Fi SSID"}, {"security", "wpa2-psk, wpa3-sae, wpa2-enterprise or wpa3-enterprise (EAP-TLS with the device certificate)"},
		{"passphrase", "Wi-Fi passphrase (8-63 characters; none for the enterprise modes)"},
		{"radius-server-name", "enterprise modes: the name devices check in the RADIUS server's certificate"},
		{"per-device-psk", "true: each device of a wpa2-psk site gets a passphrase of its own, served to the RADIUS server by MAC (docs/network.md)"},
		{"nas", "access points that take RADIUS Disconnect-Requests when a device is revoked: ADDR[:PORT]=SECRET,... (\"\" removes them)"},
		{"cidr", "IPv4 address pool, e.g. 10.20.0.0/24"}, {"gateway", "default gateway (default: first host)"},
		{"dns", "comma-separated DNS servers"}, {"ntp", "comma-separated NTP servers"}, {"lease", "lease time, e.g. 24h"},
		{"reenroll", "keep-identity (default) or new-identity: a re-opened device keeps or changes its UUID"},
		{"lwm2m-server", "LwM2M bootstrap profile: the management server, coaps://host[:port] (\"\" removes the profile)"},
		{"lwm2m-server-id", "LwM2M short server ID, 1-65534 (default 1)"},
		{"lwm2m-lifetime", "LwM2M registration lifetime in seconds (default 86400)"},
		{"lwm2m-binding", "LwM2M binding (default U)"},
		{"lwm2m-security", "how devices authenticate to the LwM2M server: certificate (default), est or psk"},
		{"lwm2m-wifi", "true: an LwM2M bootstrap writes the site's Wi-Fi too (WLAN object 12)"},
	} {
		set[f.name] = fs.String(f.name, "", f.usage)
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	req := httpapi.SiteRequest{}
	str := func(name string) *string {
		if !given[name] {
			return nil
		}
		return set[name]
	}
	list := func(name string) *[]string {
		if !given[name] {
			return nil
		}
		var out []string
		for _, s := range strings.Split(*set[name], ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return &out
	}
	req.SSID, req.Security, req.Passphrase, req.CIDR = str("ssid"), str("security"), str("passphrase"), str("cidr")
	req.Gateway, req.Lease, req.DNS, req.NTP, req.Reenroll = str("gateway"), str("lease"), list("dns"), list("ntp"), str("reenroll")
	req.RADIUSServerName = str("radius-server-name")
	if given["nas"] {
		nas := []devices.NAS{}
		for _, item := range strings.Split(*set["nas"], ",") {
			if item = strings.TrimSpace(item); item == "" {
				continue
			}
			addr, secret, ok := strings.Cut(item, "=")
			if !ok {
				return fmt.Errorf("--nas: %q: want ADDR[:PORT]=SECRET", item)
			}
			nas = append(nas, devices.NAS{Address: addr, Secret: secret})
		}
		req.NAS = &nas
	}
	if given["per-device-psk"] {
		b, err := strconv.ParseBool(*set["per-device-psk"])
		if err != nil {
			return fmt.Errorf("--per-device-psk: %q is neither true nor false", *set["per-device-psk"])
		}
		req.PerDevicePSK = &b
	}
	if req.LwM2M, err = lwm2mProfile(given, set); err != nil {
		return err
	}

	one := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("site %s: give exactly one site NAME", sub)
		}
		return url.PathEscape(pos[0]), nil
	}
	var v httpapi.SiteView
	switch sub {
	case "create":
		if _, err := one(); err != nil {
			return err
		}
		for _, f := range []string{"ssid", "security", "passphrase", "cidr"} {
			if f == "passphrase" && devices.Security(*set["security"]).Enterprise() {
				continue
			}
			if !given[f] {
				return fmt.Errorf("site create: --%s is required", f)
			}
		}
		req.Name = &pos[0]
		if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/sites", req, &v); err != nil {
			return err
		}
	case "update":
		name, err := one()
		if err != nil {
			return err
		}
		if len(given) == 0 {
			return errors.New("site update: nothing to change")
		}
		if err := e.client.Do(e.ctx, http.MethodPatch, "/api/v1/sites/"+name, req, &v); err != nil {
			return err
		}
	case "show":
		name, err := one()
		if err != nil {
			return err
		}
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/sites/"+name, nil, &v); err != nil {
			return err
		}
	case "delete":
		name, err := one()
		if err != nil {
			return err
		}
		if err := e.client.Do(e.ctx, http.MethodDelete, "/api/v1/sites/"+name, nil, nil); err != nil {
			return err
		}
		return e.print(map[string]string{"deleted": pos[0]}, func(w io.Writer) { fmt.Fprintf(w, "site %s deleted\n", pos[0]) })
	case "list":
		var r struct {
			Sites []httpapi.SiteView `json:"sites"`
		}
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/sites", nil, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSSID\tSECURITY\tCIDR\tLEASES\tDEVICES\tVERSION")
			for _, s := range r.Sites {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%d\n", s.Name, s.SSID, s.Security, s.CIDR, s.LeasesInUse, s.PoolSize, s.Devices, s.Version)
			}
			tw.Flush()
		})
	default:
		return fmt.Errorf("unknown command: site %s", sub)
	}
	return e.print(v, func(w io.Writer) {
		psk := ""
		if v.PerDevicePSK {
			psk = ", a passphrase per device"
		}
		fmt.Fprintf(w, "site %s (version %d)\n  wifi:    %s (%s, passphrase set: %v%s)\n  network: %s via %s, dns %s, ntp %s\n  lease:   %s; %d of %d addresses in use; %d devices\n",
			v.Name, v.Version, v.SSID, v.Security, v.PassphraseSet, psk, v.CIDR, v.Gateway, strings.Join(v.DNS, ","), strings.Join(v.NTP, ","),
			v.Lease, v.LeasesInUse, v.PoolSize, v.Devices)
		if p := v.LwM2M; p != nil {
			fmt.Fprintf(w, "  lwm2m:   %s (short server ID %d, lifetime %ds, binding %s, security %s, wifi %v)\n",
				p.ServerURI, p.ShortServerID, p.Lifetime, p.Binding, p.SecurityMode, p.WiFi)
		}
	})
}

func (e *env) mint(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("factory mint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "device model (required)")
	count := fs.Int("count", 0, "number of devices (required, 1-100000)")
	site := fs.String("site", "", "pre-assign the batch to this site (devices enroll without a claim)")
	out := fs.String("out", "", "directory for the flash bundles and manifest (required; must be empty or absent)")
	idevid := fs.Bool("idevid", false, "give each device a factory certificate (IDevID) from a manufacturer CA, registered for the batch")
	mfrDir := fs.String("mfr-ca", "", "with --idevid: the manufacturer CA's directory (mfr-ca.pem, mfr-ca.key); default: a new throwaway CA in OUT/mfr-ca")
	lwPSK := fs.Bool("lwm2m-psk", false, "give each device an LwM2M bootstrap PSK (in its bundle; sealed in the inventory)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	switch {
	case !devices.ValidName(*model):
		return errors.New("factory mint: --model is required (1-64 of [A-Za-z0-9._-])")
	case *count < 1 || *count > enroll.MaxBatchRows:
		return fmt.Errorf("factory mint: --count must be 1-%d", enroll.MaxBatchRows)
	case *out == "":
		return errors.New("factory mint: --out DIR is required")
	}
	if entries, err := os.ReadDir(*out); err == nil && len(entries) > 0 {
		return fmt.Errorf("factory mint: %s is not empty; bundles hold secrets, so provctl will not mix batches", *out)
	}
	// Tokens are made here and only their hashes go to the server.
	m, err := e.client.MintWith(e.ctx, httpapi.MintOptions{Model: *model, Count: *count, Site: *site, LwM2MPSK: *lwPSK})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		return err
	}
	var caNote string
	if *idevid {
		if caNote, err = e.mintIDevIDs(&m, *model, *mfrDir, *out); err != nil {
			return err
		}
	}
	res, bundles, codes := m.Batch, m.Bundles, m.Codes
	man := wire.Manifest{BatchID: res.Batch.ID, Model: *model, Site: *site}
	for i, b := range bundles {
		raw, _ := json.MarshalIndent(b, "", "  ")
		if err := os.WriteFile(filepath.Join(*out, b.Serial+".json"), append(raw, '\n'), 0o600); err != nil {
			return err
		}
		man.Devices = append(man.Devices, wire.ManifestRow{Serial: b.Serial, DeviceID: res.Results[i].DeviceID.String(),
			ClaimTokenHash: enroll.FormatTokenHash(enroll.HashToken(b.ClaimToken))})
	}
	raw, _ := json.MarshalIndent(man, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "manifest.json"), append(raw, '\n'), 0o644); err != nil {
		return err
	}
	if *site == "" {
		// The label codes: what goes on each device's label as a QR code.
		var b strings.Builder
		b.WriteString("serial,claim_code,claim_url\n")
		base := strings.TrimSuffix(e.client.BaseURL(), "/")
		for i, c := range codes {
			fmt.Fprintf(&b, "%s,%s,%s\n", bundles[i].Serial, c, c.URL(base))
		}
		if err := os.WriteFile(filepath.Join(*out, "labels.csv"), []byte(b.String()), 0o600); err != nil {
			return err
		}
	}
	return e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "batch %s: %d devices of model %s", res.Batch.ID, res.Created, *model)
		if *site != "" {
			fmt.Fprintf(w, " pre-assigned to site %s", *site)
		}
		secrets := "claim tokens"
		if *lwPSK {
			secrets = "claim tokens and LwM2M bootstrap PSKs"
		}
		fmt.Fprintf(w, "\nflash bundles and manifest.json in %s (bundles hold %s: keep them secret)\n", *out, secrets)
		if caNote != "" {
			fmt.Fprintln(w, caNote)
		}
		if *site == "" {
			fmt.Fprintf(w, "label claim codes in %s (installers claim devices with them)\n", filepath.Join(*out, "labels.csv"))
		}
	})
}

func (e *env) importFile(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("factory import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "model for rows that name none")
	site := fs.String("site", "", "pre-assign the imported devices to this site")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("factory import: give exactly one manifest FILE (CSV or JSON lines)")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := enroll.ParseManifest(f)
	if err != nil {
		return err
	}
	res, err := e.client.ImportBatch(e.ctx, httpapi.BatchRequest{Model: *model, Site: *site, Source: filepath.Base(pos[0]), Rows: rows})
	if err != nil {
		return err
	}
	if err := e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%d created, %d already registered, %d rejected\n", res.Created, res.Existing, res.Rejected)
		for i, r := range res.Results {
			if r.Status == devices.RowRejected {
				fmt.Fprintf(w, "  row %d (%s): %s\n", i+1, r.Serial, r.Reason)
			}
		}
	}); err != nil {
		return err
	}
	if res.Rejected > 0 {
		return fmt.Errorf("%d rows rejected", res.Rejected)
	}
	return nil
}

func (e *env) devices(sub string, args []string, stderr io.Writer) error {
	if sub == "configure" {
		return e.configure(args, stderr)
	}
	fs := flag.NewFlagSet("devices "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	site := fs.String("site", "", "only this site")
	state := fs.String("state", "", "only this state")
	limit := fs.Int("limit", 100, "page size (1-1000)")
	after := fs.String("after", "", "cursor: the 'next' of the previous page")
	model := fs.String("model", "", "only this model")
	firmware := fs.String("firmware", "", "only this firmware version")
	batch := fs.String("batch", "", "only this factory batch")
	seen := fs.String("seen-within", "", "only devices that reported within this duration, e.g. 1h")
	notSeen := fs.String("not-seen-within", "", "only devices that have not reported within this duration")
	format := fs.String("format", "csv", "export format: csv or json (JSON lines)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"site": *site, "state": *state, "model": *model, "firmware": *firmware,
		"batch": *batch, "seen_within": *seen, "not_seen_within": *notSeen} {
		if v != "" {
			q.Set(k, v)
		}
	}
	switch sub {
	case "rebootstrap":
		if len(pos) != 1 {
			return errors.New("devices rebootstrap: give one SERIAL or ID")
		}
		var d httpapi.DeviceView
		if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(pos[0])+"/rebootstrap", nil, &d); err != nil {
			return err
		}
		return e.print(d, func(w io.Writer) {
			fmt.Fprintf(w, "%s: its next LwM2M bootstrap gets fresh credentials (its management server can ask for one: execute /1/x/9)\n", d.Serial)
		})
	case "lwm2m-credentials":
		if len(pos) > 1 {
			return errors.New("devices lwm2m-credentials: at most one SERIAL or ID (or filters)")
		}
		if len(pos) == 1 {
			var c enroll.LwM2MCredentials
			if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(pos[0])+"/lwm2m-credentials", nil, &c); err != nil {
				return err
			}
			return e.print(c, func(w io.Writer) {
				fmt.Fprintf(w, "endpoint %s\npsk identity %s\npsk %s\n", c.Endpoint, c.PSKIdentity, c.PSK)
			})
		}
		q.Set("format", *format)
		var raw []byte
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/lwm2m/credentials?"+q.Encode(), nil, &raw); err != nil {
			return err
		}
		_, err := e.out.Write(raw)
		return err
	case "export":
		q.Set("format", *format)
		var raw []byte
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/devices/export?"+q.Encode(), nil, &raw); err != nil {
			return err
		}
		_, err := e.out.Write(raw)
		return err
	case "history":
		if len(pos) != 1 {
			return errors.New("devices history: give one SERIAL or ID")
		}
		var r struct {
			Events []devices.AuditEvent `json:"events"`
		}
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(pos[0])+"/history", nil, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) { printEvents(w, r.Events) })
	case "list":
		if *after != "" {
			q.Set("after", *after)
		}
		q.Set("limit", fmt.Sprint(*limit))
		var r struct {
			Devices []httpapi.DeviceView `json:"devices"`
			Next    string               `json:"next,omitempty"`
		}
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/devices?"+q.Encode(), nil, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERIAL\tID\tMODEL\tSITE\tSTATE\tADDRESS")
			for _, d := range r.Devices {
				addr := "-"
				if d.Lease != nil {
					addr = d.Lease.Address
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Serial, d.ID, d.Model, d.Site, d.State, addr)
			}
			tw.Flush()
			if r.Next != "" {
				fmt.Fprintf(w, "more: --after %s\n", r.Next)
			}
		})
	case "show":
		if len(pos) != 1 {
			return errors.New("devices show: give one SERIAL or ID")
		}
		var d httpapi.DeviceView
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/devices/"+url.PathEscape(pos[0]), nil, &d); err != nil {
			return err
		}
		return e.print(d, func(w io.Writer) {
			fmt.Fprintf(w, "%s (%s)\n  model %s, site %s, state %s, config version %d\n", d.Serial, d.ID, d.Model, d.Site, d.State, d.ConfigVersion)
			if d.Lease != nil {
				fmt.Fprintf(w, "  lease %s until %s\n", d.Lease.Address, d.Lease.Expires.Format("2006-01-02 15:04:05Z07:00"))
			}
			if d.CertSerial != "" {
				fmt.Fprintf(w, "  certificate serial %s, valid until %s\n", d.CertSerial, d.CertNotAfter.Format("2006-01-02"))
			}
		})
	}
	return fmt.Errorf("unknown command: devices %s", sub)
}

func (e *env) audit(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	before := fs.String("before", "", "events older than this event ID (the page before's last), newest first")
	after := fs.String("after", "", "events newer than this event ID, oldest first")
	limit := fs.Int("limit", 50, "at most this many events (1-1000)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var page httpapi.AuditPage
	var err error
	if *after != "" {
		page, err = e.client.Audit(e.ctx, *after, *limit)
	} else {
		page, err = e.client.AuditNewest(e.ctx, *before, *limit)
	}
	if err != nil {
		return err
	}
	return e.print(page, func(w io.Writer) {
		printEvents(w, page.Events)
		if page.Next != "" && *after == "" {
			fmt.Fprintf(w, "older: provctl audit --before %s\n", page.Next)
		}
	})
}

func printEvents(w io.Writer, evs []devices.AuditEvent) {
	for _, ev := range evs {
		fmt.Fprintf(w, "%s %-18s %-22s %s", ev.Time.Format("2006-01-02T15:04:05Z"), ev.Action, ev.Target, ev.Actor)
		if ev.Source != "" {
			fmt.Fprintf(w, " from %s", ev.Source)
		}
		fmt.Fprintln(w)
	}
}

func (e *env) serverCert(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("cert server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := fs.String("name", "", "comma-separated DNS names (the first is the common name)")
	ips := fs.String("ip", "", "comma-separated IP addresses")
	lifetime := fs.String("lifetime", "8760h", "validity")
	out := fs.String("out", "", "directory for server.pem (chain), server.key (0600) and ca.pem (required)")
	radius := fs.Bool("radius", false, "for a RADIUS server doing EAP-TLS with device certificates: also client-ca.pem (the CAs device certificates chain to) and empty/ (docs/radius)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" || (*names == "" && *ips == "") {
		return errors.New("cert server: --out and at least one --name or --ip are required")
	}
	split := func(s string) []string {
		var r []string
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				r = append(r, x)
			}
		}
		return r
	}
	var res httpapi.ServerCertResponse
	if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/server-certificates",
		httpapi.ServerCertRequest{Names: split(*names), IPs: split(*ips), Lifetime: *lifetime}, &res); err != nil {
		return err
	}
	if err := res.WriteFiles(*out, *radius); err != nil {
		return err
	}
	return e.print(map[string]string{"dir": *out}, func(w io.Writer) {
		if *radius {
			fmt.Fprintf(w, "server.pem, server.key, ca.pem, client-ca.pem and empty/ written to %s\n", *out)
			return
		}
		fmt.Fprintf(w, "server.pem, server.key and ca.pem written to %s\n", *out)
	})
}

func (e *env) token(sub string, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("token "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	role := fs.String("role", "", "admin, operator, installer, viewer or radius (a RADIUS server's: per-device Wi-Fi passphrases by MAC only)")
	sites := fs.String("sites", "", "comma-separated sites the token is limited to (default: all)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "create":
		if len(pos) != 1 || *role == "" {
			return errors.New("token create: give a NAME and --role")
		}
		req := httpapi.TokenRequest{Name: pos[0], Role: devices.Role(*role)}
		for _, s := range strings.Split(*sites, ",") {
			if s = strings.TrimSpace(s); s != "" {
				req.Sites = append(req.Sites, s)
			}
		}
		var res httpapi.TokenCreated
		if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/tokens", req, &res); err != nil {
			return err
		}
		return e.print(res, func(w io.Writer) {
			fmt.Fprintf(w, "token %s (%s, role %s", res.ID, res.Name, res.Role)
			if len(res.Sites) > 0 {
				fmt.Fprintf(w, ", sites %s", strings.Join(res.Sites, ","))
			}
			fmt.Fprintf(w, "):\n%s\nIt is shown only now: store it as a secret.\n", res.Secret)
		})
	case "list":
		var r struct {
			Tokens []devices.Token `json:"tokens"`
		}
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/tokens", nil, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tSITES\tCREATED")
			for _, t := range r.Tokens {
				sites := strings.Join(t.Sites, ",")
				if sites == "" {
					sites = "(all)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, sites, t.CreatedAt.Format("2006-01-02"))
			}
			tw.Flush()
		})
	case "revoke":
		if len(pos) != 1 {
			return errors.New("token revoke: give one token ID")
		}
		if err := e.client.Do(e.ctx, http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
			return err
		}
		return e.print(map[string]string{"revoked": pos[0]}, func(w io.Writer) { fmt.Fprintf(w, "token %s revoked\n", pos[0]) })
	}
	return fmt.Errorf("unknown command: token %s", sub)
}

func (e *env) revoke(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	site := fs.String("site", "", "revoke every device of this site")
	batch := fs.String("batch", "", "revoke every device of this factory batch")
	reason := fs.String("reason", "", "why (required; recorded in the audit log)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *reason == "" {
		return errors.New("revoke: --reason is required")
	}
	var res httpapi.RevokeResponse
	if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/revocations",
		httpapi.RevokeRequest{Devices: pos, Site: *site, Batch: *batch, Reason: *reason}, &res); err != nil {
		return err
	}
	return e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%d devices revoked (job %s): certificates on the CRL, sessions cut, leases released\n", res.Revoked, res.Job)
		for _, d := range res.Devices {
			fmt.Fprintf(w, "  %s (%s)\n", d.Serial, d.ID)
		}
	})
}

// jobs lists the bulk operations, or shows one: provctl jobs [ID].
func (e *env) jobs(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("jobs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	line := func(w io.Writer, j devices.Job) {
		what := j.Selector.Site
		switch {
		case j.Kind == devices.JobImport && j.Batch != nil:
			what = "batch " + j.Batch.ID
		case j.Kind == devices.JobSiteConfig:
			what = "site " + j.Site
		case j.Kind == devices.JobRetarget:
			what = j.Model + "@" + j.Site
		case j.Selector.Batch != "":
			what = strings.TrimPrefix(what+" batch "+j.Selector.Batch, " ")
		}
		if n := len(j.Selector.IDs); n > 0 {
			what = strings.TrimPrefix(fmt.Sprintf("%s %d devices", what, n), " ")
		}
		fmt.Fprintf(w, "%s  %-8s %-7s %d/%d done, %d changed  %s  %s\n", j.ID, j.Kind, j.State, j.Done, j.Total, j.Changed,
			j.CreatedAt.Format("2006-01-02T15:04:05Z"), what)
	}
	switch len(pos) {
	case 0:
		var res httpapi.JobList
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/jobs", nil, &res); err != nil {
			return err
		}
		return e.print(res, func(w io.Writer) {
			for _, j := range res.Jobs {
				line(w, j)
			}
		})
	case 1:
		var j devices.Job
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/jobs/"+url.PathEscape(pos[0]), nil, &j); err != nil {
			return err
		}
		return e.print(j, func(w io.Writer) { line(w, j) })
	}
	return errors.New("jobs: at most one job ID")
}

func (e *env) reopen(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("reopen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "write the device's new flash bundle here (0600)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("reopen: give one SERIAL or ID")
	}
	var res httpapi.ReopenResponse
	if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/devices/"+url.PathEscape(pos[0])+"/reopen", nil, &res); err != nil {
		return err
	}
	if *out != "" {
		raw, _ := json.MarshalIndent(res.Bundle, "", "  ")
		if err := os.WriteFile(*out, append(raw, '\n'), 0o600); err != nil {
			return err
		}
	}
	return e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%s re-opened (state %s); new claim token: %s\n", res.Device.Serial, res.Device.State, res.ClaimToken)
		if *out != "" {
			fmt.Fprintf(w, "flash bundle written to %s\n", *out)
		}
	})
}

func (e *env) backupTo(args []string) error {
	if len(args) != 1 {
		return errors.New("backup: give the FILE to write")
	}
	var raw []byte
	if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/backup", nil, &raw); err != nil {
		return err
	}
	if err := atomicfile.Write(args[0], raw, 0o600); err != nil {
		return err
	}
	return e.print(map[string]any{"file": args[0], "bytes": len(raw)}, func(w io.Writer) {
		fmt.Fprintf(w, "backup written to %s (%d bytes; holds the encrypted CA keys: keep it safe)\n", args[0], len(raw))
	})
}

func (e *env) claim(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("claim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	site := fs.String("site", "", "the site to bind the device to (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *site == "" {
		return errors.New("claim: give the label's CODE (or its URL) and --site")
	}
	var d httpapi.DeviceView
	if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/claims", httpapi.ClaimRequest{Code: pos[0], Site: *site}, &d); err != nil {
		return err
	}
	return e.print(d, func(w io.Writer) {
		fmt.Fprintf(w, "%s claimed for site %s: it enrolls at its next attempt\n", d.Serial, d.Site)
	})
}

func (e *env) renderLabels(args []string) error {
	if len(args) != 1 {
		return errors.New("factory labels: give the mint DIR (it holds labels.csv)")
	}
	f, err := os.Open(filepath.Join(args[0], "labels.csv"))
	if err != nil {
		return err
	}
	defer f.Close()
	ls, err := labels.Read(f)
	if err != nil {
		return err
	}
	out := filepath.Join(args[0], "labels")
	if err := labels.WriteAll(out, ls); err != nil {
		return err
	}
	return e.print(map[string]any{"dir": out, "labels": len(ls)}, func(w io.Writer) {
		fmt.Fprintf(w, "%d labels (PNG and SVG, and A4 sheets) in %s\n", len(ls), out)
	})
}

// configure sets or clears the config override of devices (devices configure
// [SERIAL...] [--site S] [--batch B] [--ssid ..] [--clear]).
func (e *env) configure(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("devices configure", flag.ContinueOnError)
	fs.SetOutput(stderr)
	site := fs.String("site", "", "every device of this site")
	batch := fs.String("batch", "", "every device of this factory batch")
	ssid := fs.String("ssid", "", "Wi-Fi SSID")
	security := fs.String("security", "", "wpa2-psk or wpa3-sae")
	pass := fs.String("passphrase", "", "Wi-Fi passphrase")
	dns := fs.String("dns", "", "comma-separated DNS servers")
	ntp := fs.String("ntp", "", "comma-separated NTP servers")
	clear := fs.Bool("clear", false, "remove the override: back to the site profile")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	req := httpapi.OverrideRequest{Devices: pos, Site: *site, Batch: *batch, Clear: *clear}
	if !*clear {
		o := &httpapi.OverrideFields{SSID: *ssid, Security: *security, Passphrase: *pass}
		for _, s := range strings.Split(*dns, ",") {
			if s = strings.TrimSpace(s); s != "" {
				o.DNS = append(o.DNS, s)
			}
		}
		for _, s := range strings.Split(*ntp, ",") {
			if s = strings.TrimSpace(s); s != "" {
				o.NTP = append(o.NTP, s)
			}
		}
		req.Override = o
	}
	var res httpapi.OverrideResponse
	if err := e.client.Do(e.ctx, http.MethodPatch, "/api/v1/devices/config", req, &res); err != nil {
		return err
	}
	return e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "%d devices changed; new config pushed to %d enrolled devices\n", res.Changed, res.Pushed)
	})
}

// clusterStatus shows the cluster: provctl cluster status.
func (e *env) clusterStatus(args []string) error {
	if len(args) > 0 {
		return errors.New("cluster status: takes no arguments")
	}
	var st httpapi.ClusterStatus
	if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/cluster", nil, &st); err != nil {
		return err
	}
	return e.print(st, func(w io.Writer) {
		fmt.Fprintf(w, "replicas: %d (answered by %s)\n", len(st.Replicas), st.Self)
		for _, r := range st.Replicas {
			role := ""
			if r.ID == st.Leader {
				role = "  leader"
			}
			fmt.Fprintf(w, "  %s  %-20s %s  %s  up since %s%s\n", r.ID, r.Host, r.API, r.Version, r.Started.Format(time.RFC3339), role)
		}
		if st.Leader == "" {
			fmt.Fprintln(w, "  no replica is elected (cluster-wide work waits)")
		}
		fmt.Fprintf(w, "etcd: %d members, inventory %d keys\n", len(st.Etcd), st.Keys)
		for _, m := range st.Etcd {
			health := "healthy"
			if !m.Healthy {
				health = "UNHEALTHY: " + m.Error
			}
			lead := ""
			if m.Leader {
				lead = "  leader"
			}
			fmt.Fprintf(w, "  %-10s %s  %s  db %.1f MiB (%.1f MiB in use)  %s%s\n", m.Name, m.Endpoint, m.Version,
				float64(m.DBSize)/(1<<20), float64(m.DBSizeInUse)/(1<<20), health, lead)
		}
	})
}

// lwm2mProfile is the LwM2M profile the --lwm2m-* flags give, nil when none
// is given. The other flags need --lwm2m-server: the profile is set whole.
func lwm2mProfile(given map[string]bool, set map[string]*string) (*devices.LwM2MProfile, error) {
	if !given["lwm2m-server"] {
		for name := range given {
			if strings.HasPrefix(name, "lwm2m-") {
				return nil, fmt.Errorf("--%s needs --lwm2m-server: the LwM2M profile is set whole", name)
			}
		}
		return nil, nil
	}
	p := &devices.LwM2MProfile{ServerURI: *set["lwm2m-server"], Binding: *set["lwm2m-binding"],
		SecurityMode: devices.LwM2MSecurity(*set["lwm2m-security"])}
	if v := *set["lwm2m-server-id"]; v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("--lwm2m-server-id: %q is not a number of 1-65534", v)
		}
		p.ShortServerID = uint16(n)
	}
	if v := *set["lwm2m-lifetime"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--lwm2m-lifetime: %q is not a number of seconds", v)
		}
		p.Lifetime = n
	}
	if v := *set["lwm2m-wifi"]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("--lwm2m-wifi: %q is neither true nor false", v)
		}
		p.WiFi = b
	}
	return p, nil
}
