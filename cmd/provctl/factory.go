package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// factoryCA runs `provctl factory ca add|list|remove`.
func (e *env) factoryCA(sub string, args []string, stderr io.Writer) error {
	switch sub {
	case "add":
		fs := flag.NewFlagSet("factory ca add", flag.ContinueOnError)
		fs.SetOutput(stderr)
		model := fs.String("model", "", "the model of every device under this CA (required)")
		batch := fs.String("batch", "", "devices must be in this batch (auto-registered ones join it; created when absent)")
		site := fs.String("site", "", "with --auto-register: claim auto-registered devices for this site")
		auto := fs.Bool("auto-register", false, "register an unknown serial under this CA on first contact")
		expired := fs.Bool("allow-expired", false, "accept factory certificates past their validity")
		fields := fs.String("serial-fields", "", "subject fields holding the serial, in order (default serialNumber,CN; also OU, UID)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("factory ca add FILE --model M: one PEM certificate file")
		}
		raw, err := os.ReadFile(pos[0])
		if err != nil {
			return err
		}
		req := httpapi.FactoryCARequest{Certificate: string(raw), Model: *model, Batch: *batch, Site: *site,
			AutoRegister: *auto, AllowExpired: *expired}
		if *fields != "" {
			req.SerialFields = strings.Split(*fields, ",")
		}
		ca, err := e.client.AddFactoryCA(e.ctx, req)
		if err != nil {
			return err
		}
		return e.print(ca, func(w io.Writer) {
			fmt.Fprintf(w, "manufacturer CA %s registered for model %s\n  %s\n", ca.ID, ca.Model, ca.Subject)
		})
	case "list":
		if _, err := parse(flag.NewFlagSet("factory ca list", flag.ContinueOnError), args); err != nil {
			return err
		}
		cas, err := e.client.FactoryCAs(e.ctx)
		if err != nil {
			return err
		}
		return e.print(cas, func(w io.Writer) {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMODEL\tBATCH\tSITE\tAUTO-REGISTER\tALLOW-EXPIRED\tSUBJECT")
			for _, c := range cas {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%v\t%s\n", c.ID[:16], c.Model, dash(c.Batch), dash(c.Site), c.AutoRegister, c.AllowExpired, c.Subject)
			}
			tw.Flush()
		})
	case "remove":
		pos, err := parse(flag.NewFlagSet("factory ca remove", flag.ContinueOnError), args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("factory ca remove ID: the CA's ID (or its first 8+ hex digits)")
		}
		ca, err := e.client.RemoveFactoryCA(e.ctx, pos[0])
		if err != nil {
			return err
		}
		return e.print(ca, func(w io.Writer) {
			fmt.Fprintf(w, "manufacturer CA %s removed: no new enrollment under it\n", ca.ID)
		})
	}
	return fmt.Errorf("factory ca %s: add, list or remove", sub)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// mintIDevIDs gives a minted batch factory certificates: from the
// manufacturer CA in mfrDir, or a new throwaway one saved in OUT/mfr-ca.
// A new CA is registered for the model and the batch; a given one is
// registered for the model when it is not yet.
func (e *env) mintIDevIDs(m *httpapi.Minted, model, mfrDir, out string) (string, error) {
	var ca *mfr.CA
	var err error
	fresh := mfrDir == ""
	if fresh {
		mfrDir = filepath.Join(out, "mfr-ca")
		if ca, err = mfr.New("provctl throwaway manufacturer CA " + m.Batch.Batch.ID[:8]); err == nil {
			err = ca.Save(mfrDir)
		}
	} else {
		ca, err = mfr.Load(mfrDir)
	}
	if err != nil {
		return "", fmt.Errorf("factory mint --idevid: %w", err)
	}
	if fresh {
		reg, err := e.client.RegisterIDevIDs(e.ctx, m, ca)
		if err != nil {
			return "", fmt.Errorf("factory mint --idevid: %w", err)
		}
		return fmt.Sprintf("factory certificates from manufacturer CA %s (key in %s), registered for model %s and this batch",
			reg.ID[:16], mfrDir, model), nil
	}
	if err := m.AddIDevIDs(ca); err != nil {
		return "", err
	}
	reg, err := e.client.AddFactoryCA(e.ctx, httpapi.FactoryCARequest{Certificate: string(ca.CertPEM()), Model: model})
	var ae *httpapi.APIError
	switch {
	case errors.As(err, &ae) && ae.Code == "exists":
		return fmt.Sprintf("factory certificates from the registered manufacturer CA in %s", mfrDir), nil
	case err != nil:
		return "", fmt.Errorf("factory mint --idevid: register the manufacturer CA: %w", err)
	}
	return fmt.Sprintf("factory certificates from manufacturer CA %s (key in %s), registered for model %s",
		reg.ID[:16], mfrDir, model), nil
}
