package labels_test

import (
	"bytes"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provisiond/provisiond/internal/testtools"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/labels"
)

func TestRenderLabels(t *testing.T) {
	var csv strings.Builder
	csv.WriteString("serial,claim_code,claim_url\n")
	var ls []labels.Label
	for range 60 {
		c := enroll.NewClaimCode(enroll.NewSerial("TH1"))
		url := c.URL("https://prov.example.net:8443")
		csv.WriteString(c.Serial + "," + c.String() + "," + url + "\n")
		ls = append(ls, labels.Label{Serial: c.Serial, URL: url})
	}
	got, err := labels.Read(strings.NewReader(csv.String()))
	if err != nil || len(got) != 60 || got[0] != ls[0] {
		t.Fatalf("read: %v %d", err, len(got))
	}
	dir := t.TempDir()
	if err := labels.WriteAll(dir, got); err != nil {
		t.Fatal(err)
	}
	code, _ := got[0].Code()
	if code.Size > 45 { // version 7 at most: the URL form fits a small label
		t.Errorf("QR code is %d modules wide", code.Size)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, got[0].Serial+".png"))
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil || img.Bounds().Dx() < code.Size {
		t.Fatalf("png: %v %v", err, img)
	}
	svg, _ := os.ReadFile(filepath.Join(dir, got[0].Serial+".svg"))
	black := 0
	for y := range code.Size {
		for x := range code.Size {
			if code.Black(x, y) {
				black++
			}
		}
	}
	path := string(svg)[strings.Index(string(svg), ` d="`):]
	path = path[:strings.Index(path, `"/>`)]
	if n := strings.Count(path, "z"); n != black || !strings.Contains(string(svg), got[0].Serial) {
		t.Errorf("svg draws %d modules, the code has %d black", n, black)
	}
	pages, _ := filepath.Glob(filepath.Join(dir, "sheet-*.svg"))
	if len(pages) < 2 {
		t.Errorf("60 labels on %d A4 pages", len(pages))
	}
	if _, err := labels.Read(strings.NewReader("serial,claim_url\n../../etc/passwd,x\n")); err == nil {
		t.Error("a path in the serial column was accepted")
	}
}

// TestLabelsScan decodes a rendered label with an independent QR decoder
// (zbarimg, Debian's zbar-tools): the label must give back the claim URL.
func TestLabelsScan(t *testing.T) {
	zbar := testtools.Need(t, "zbarimg")
	c := enroll.NewClaimCode("TH1-LABELTEST")
	l := labels.Label{Serial: c.Serial, URL: c.URL("https://prov.example.net:8443")}
	dir := t.TempDir()
	if err := labels.WriteAll(dir, []labels.Label{l}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(zbar, "-q", "--raw", filepath.Join(dir, l.Serial+".png")).Output()
	if err != nil {
		t.Fatalf("zbarimg: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != l.URL {
		t.Fatalf("label scans as %q, want %q", got, l.URL)
	}
	if back, err := enroll.ParseClaimCode(strings.TrimSpace(string(out))); err != nil || back != c {
		t.Errorf("scanned code does not parse back: %+v %v", back, err)
	}
}
