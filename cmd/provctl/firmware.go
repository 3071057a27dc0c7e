package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// firmware runs the firmware subcommands: add, list, rollout, pause,
// resume, abort, pin.
func (e *env) firmware(sub string, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("firmware "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "device model")
	version := fs.String("version", "", "firmware version (dotted numbers)")
	site := fs.String("site", "", "site (rollouts; empty: every site)")
	percent := fs.Int("percent", 100, "share of the devices (rollout)")
	minBoot := fs.String("min-bootloader", "", "minimum bootloader version (add)")
	minHW := fs.String("min-hardware", "", "minimum hardware revision (add)")
	notes := fs.String("notes", "", "release notes (add)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		if len(pos) != 1 || *model == "" || *version == "" {
			return errors.New("firmware add FILE --model M --version V [--min-bootloader V] [--min-hardware V] [--notes TEXT]")
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		q := url.Values{"model": {*model}, "version": {*version}}
		for k, v := range map[string]string{"min_bootloader": *minBoot, "min_hardware": *minHW, "notes": *notes} {
			if v != "" {
				q.Set(k, v)
			}
		}
		var res httpapi.FirmwareAdded
		if err := e.client.DoRaw(e.ctx, http.MethodPost, "/api/v1/firmware?"+q.Encode(), "application/octet-stream", f, &res); err != nil {
			return err
		}
		return e.print(res, func(w io.Writer) {
			fmt.Fprintf(w, "added %s %s: %d bytes, sha256 %s, manifest signed\n", res.Manifest.Model, res.Manifest.Version, res.Manifest.Size, res.Manifest.SHA256)
		})
	case "list":
		var v httpapi.FirmwareView
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/firmware", nil, &v); err != nil {
			return err
		}
		return e.print(v, func(w io.Writer) {
			for _, m := range v.Images {
				fmt.Fprintf(w, "%-10s %-10s %10d  %s  %s\n", m.Model, m.Version, m.Size, m.SHA256[:16], m.Created.Format("2006-01-02"))
			}
			for _, r := range v.Rollouts {
				site := r.Site
				if site == "" {
					site = "every site"
				}
				fmt.Fprintf(w, "rollout %s %s at %s: %d%% (%s), %d of %d devices on it", r.Model, r.Version, site, r.Percent, r.State, r.OnVersion, r.Devices)
				if r.Previous != "" {
					fmt.Fprintf(w, ", the others on %s", r.Previous)
				}
				vs := make([]string, 0, len(r.Reported))
				for k := range r.Reported {
					vs = append(vs, k)
				}
				sort.Strings(vs)
				for _, k := range vs {
					name := k
					if name == "" {
						name = "unreported"
					}
					fmt.Fprintf(w, "; %s: %d", name, r.Reported[k])
				}
				fmt.Fprintln(w)
			}
		})
	case "rollout":
		if *model == "" || *version == "" {
			return errors.New("firmware rollout --model M --version V [--site S] [--percent P]")
		}
		var r devices.Rollout
		if err := e.client.Do(e.ctx, http.MethodPut, "/api/v1/firmware/rollouts",
			httpapi.RolloutRequest{Model: *model, Site: *site, Version: *version, Percent: *percent}, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) {
			fmt.Fprintf(w, "rollout of %s %s: %d%%, %s\n", r.Model, r.Version, r.Percent, r.State)
		})
	case "pause", "resume", "abort":
		if *model == "" {
			return fmt.Errorf("firmware %s --model M [--site S]", sub)
		}
		state := map[string]string{"pause": devices.RolloutPaused, "resume": devices.RolloutActive, "abort": devices.RolloutAborted}[sub]
		var r devices.Rollout
		if err := e.client.Do(e.ctx, http.MethodPost, "/api/v1/firmware/rollouts/state",
			httpapi.RolloutStateRequest{Model: *model, Site: *site, State: state}, &r); err != nil {
			return err
		}
		return e.print(r, func(w io.Writer) { fmt.Fprintf(w, "rollout of %s %s: %s\n", r.Model, r.Version, r.State) })
	case "pin":
		if len(pos) != 1 {
			return errors.New("firmware pin SERIAL|ID --version V (empty --version: follow the rollouts)")
		}
		if err := e.client.Do(e.ctx, http.MethodPut, "/api/v1/devices/"+url.PathEscape(pos[0])+"/firmware", httpapi.PinRequest{Version: *version}, nil); err != nil {
			return err
		}
		return e.print(map[string]string{"device": pos[0], "version": *version}, func(w io.Writer) { fmt.Fprintf(w, "%s pinned to %q\n", pos[0], *version) })
	}
	return fmt.Errorf("unknown command firmware %s", sub)
}
