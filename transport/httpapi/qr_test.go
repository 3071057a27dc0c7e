package httpapi

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"testing"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/labels"
)

// Every printed label's own PNG reads back as its URL. Searching for the
// finder patterns alone failed on 115 of 2,000 labels (random claim codes
// make some codes' data look like a finder pattern); these 200 would then
// miss about 12.
func TestReadQRLabels(t *testing.T) {
	failed := 0
	for i := range 200 {
		c := enroll.NewClaimCode(fmt.Sprintf("TH1-%07d", i))
		l := labels.Label{Serial: c.Serial, URL: c.URL(fmt.Sprintf("https://127.0.0.1:%d", 30000+i))}
		code, err := l.Code()
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(bytes.NewReader(code.PNG()))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := readQR(img); err != nil || got != l.URL {
			if failed++; failed <= 3 {
				t.Errorf("label %q read as %q, %v", l.URL, got, err)
			}
		}
	}
	if failed > 0 {
		t.Errorf("%d of 200 labels unread", failed)
	}
	if _, err := readQR(image.NewGray(image.Rect(0, 0, 320, 240))); err == nil {
		t.Error("a blank frame read as a code")
	}
}
