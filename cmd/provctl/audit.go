package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/provisiond/provisiond/devices"
)

func (e *env) auditExport(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "file to write (default standard output)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	w := e.out
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	var v devices.AuditVerifier
	for after := ""; ; {
		page, err := e.client.Audit(e.ctx, after, 1000)
		if err != nil {
			return err
		}
		// A pruned log starts at its chains' anchors: they come first, one
		// line each, so that the export verifies on its own.
		for _, a := range page.Anchors {
			v.Anchor(a)
			if err := enc.Encode(anchorLine{Anchor: &a}); err != nil {
				return err
			}
		}
		for _, ev := range page.Events {
			if err := v.Add(ev); err != nil { // refuse to export a log that does not verify
				return err
			}
			if err := enc.Encode(ev); err != nil {
				return err
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	head := v.Head()
	fmt.Fprintf(stderr, "exported %d events in %d chains; head hash %s\n", head.Events, head.Chains, head.Hash)
	return nil
}

func (e *env) auditVerify(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	head := fs.String("head", "", "the hash the newest event must have (recorded from an earlier export)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	var res devices.AuditHead
	switch len(pos) {
	case 0:
		if err := e.client.Do(e.ctx, http.MethodGet, "/api/v1/audit/verify", nil, &res); err != nil {
			return err
		}
	case 1:
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		var v devices.AuditVerifier
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
		events := 0
		for line := 1; sc.Scan(); line++ {
			var a anchorLine
			if err := json.Unmarshal(sc.Bytes(), &a); err == nil && a.Anchor != nil {
				if events > 0 {
					return fmt.Errorf("%w: line %d: an anchor after events", devices.ErrAuditTampered, line)
				}
				v.Anchor(*a.Anchor)
				continue
			}
			var ev devices.AuditEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				return fmt.Errorf("%w: line %d does not decode: %v", devices.ErrAuditTampered, line, err)
			}
			if err := v.Add(ev); err != nil {
				return err
			}
			events++
		}
		if err := sc.Err(); err != nil {
			return err
		}
		res = v.Head()
	default:
		return errors.New("audit verify: at most one FILE")
	}
	if *head != "" && *head != res.Hash {
		return fmt.Errorf("%w: the log's head hash is %s, not the recorded %s", devices.ErrAuditTampered, res.Hash, *head)
	}
	return e.print(res, func(w io.Writer) {
		fmt.Fprintf(w, "audit log OK: %d events in %d chains, head hash %s\n", res.Events, res.Chains, res.Hash)
	})
}

// anchorLine is an export's line for a pruned chain's anchor:
// {"anchor":{"chain":…,"seq":…,"time":…,"hash":…}}.
type anchorLine struct {
	Anchor *devices.AuditAnchor `json:"anchor"`
}
