// Package labels renders device labels: a QR code of the device's claim URL
// with its serial underneath, as PNG and SVG, one per device and on a sheet.
package labels

import (
	"encoding/csv"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"strings"

	"rsc.io/qr"

	"github.com/provisiond/provisiond/devices"
)

// Label is one device's label.
type Label struct {
	Serial string
	URL    string // what the QR code encodes
}

// Read loads labels.csv (serial, claim_code, claim_url) as provctl factory
// mint writes it.
func Read(r io.Reader) ([]Label, error) {
	cr := csv.NewReader(r)
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("labels.csv: %w", err)
	}
	col := map[string]int{}
	for i, h := range head {
		col[strings.TrimSpace(h)] = i
	}
	si, ok1 := col["serial"]
	ui, ok2 := col["claim_url"]
	if !ok1 || !ok2 {
		return nil, errors.New("labels.csv: want columns serial and claim_url")
	}
	var out []Label
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("labels.csv: %w", err)
		}
		l := Label{Serial: rec[si], URL: rec[ui]}
		if !devices.ValidSerial(l.Serial) { // the serial names files
			return nil, fmt.Errorf("labels.csv: serial %q is not a valid serial", l.Serial)
		}
		out = append(out, l)
	}
}

// Code encodes the label's URL (error correction M: a label survives scuffs).
func (l Label) Code() (*qr.Code, error) { return qr.Encode(l.URL, qr.M) }

const quiet = 4 // modules of white border the QR standard asks for

// SVG renders the label: the QR code with the serial below, in millimetres
// for a module size of mm.
func (l Label) SVG(mm float64) (string, error) {
	c, err := l.Code()
	if err != nil {
		return "", err
	}
	w := float64(c.Size+2*quiet) * mm
	h := w + 6
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.2fmm" height="%.2fmm" viewBox="0 0 %.2f %.2f">`, w, h, w, h)
	b.WriteString(l.body(c, mm, 0, 0))
	b.WriteString("</svg>\n")
	return b.String(), nil
}

// body draws the label at (x, y): white background, black modules, serial.
func (l Label) body(c *qr.Code, mm, x, y float64) string {
	var b strings.Builder
	w := float64(c.Size+2*quiet) * mm
	fmt.Fprintf(&b, `<g transform="translate(%.2f %.2f)"><rect width="%.2f" height="%.2f" fill="#fff"/><path fill="#000" d="`, x, y, w, w+6)
	for yy := 0; yy < c.Size; yy++ {
		for xx := 0; xx < c.Size; xx++ {
			if c.Black(xx, yy) {
				fmt.Fprintf(&b, "M%.2f %.2fh%.2fv%.2fh-%.2fz", float64(xx+quiet)*mm, float64(yy+quiet)*mm, mm, mm, mm)
			}
		}
	}
	fmt.Fprintf(&b, `"/><text x="%.2f" y="%.2f" font-family="monospace" font-size="3.2" text-anchor="middle">%s</text></g>`,
		w/2, w+3.5, html.EscapeString(l.Serial))
	return b.String()
}

// Sheet lays labels out on A4 pages (one SVG per page).
func Sheet(ls []Label, mm float64) ([]string, error) {
	const pageW, pageH, margin, gap = 210.0, 297.0, 10.0, 4.0
	var pages []string
	var b strings.Builder
	x, y, rowH := margin, margin, 0.0
	flush := func() {
		if b.Len() > 0 {
			pages = append(pages, fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="210mm" height="297mm" viewBox="0 0 210 297">%s</svg>`+"\n", b.String()))
			b.Reset()
		}
	}
	for _, l := range ls {
		c, err := l.Code()
		if err != nil {
			return nil, err
		}
		w := float64(c.Size+2*quiet) * mm
		if x+w > pageW-margin {
			x, y, rowH = margin, y+rowH+gap, 0
		}
		if y+w+6 > pageH-margin {
			flush()
			x, y, rowH = margin, margin, 0
		}
		b.WriteString(l.body(c, mm, x, y))
		x += w + gap
		rowH = max(rowH, w+6)
	}
	flush()
	return pages, nil
}

// WriteAll renders every label as DIR/<serial>.png and .svg, and the sheet as
// DIR/sheet-<n>.svg.
func WriteAll(dir string, ls []Label) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, l := range ls {
		c, err := l.Code()
		if err != nil {
			return fmt.Errorf("label %s: %w", l.Serial, err)
		}
		if err := os.WriteFile(filepath.Join(dir, l.Serial+".png"), c.PNG(), 0o600); err != nil {
			return err
		}
		svg, err := l.SVG(0.5)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, l.Serial+".svg"), []byte(svg), 0o600); err != nil {
			return err
		}
	}
	pages, err := Sheet(ls, 0.5)
	if err != nil {
		return err
	}
	for i, p := range pages {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("sheet-%d.svg", i+1)), []byte(p), 0o600); err != nil {
			return err
		}
	}
	return nil
}
