package httpapi

import (
	"bytes"
	"errors"
	"image"
	_ "image/jpeg" // camera frames arrive as PNG or JPEG
	_ "image/png"
	"io"
	"net/http"
	"strings"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/provisiond/provisiond/enroll"
)

// MaxFrameBytes bounds a camera frame sent to POST /api/v1/qr-decode.
const MaxFrameBytes = 4 << 20

// maxFramePixels bounds a frame's size once decoded (4096x4096).
const maxFramePixels = 4096 * 4096

// QRText is the text of a QR code read from an image.
type QRText struct {
	Text string `json:"text"`
}

// decodeQR reads the QR code in a camera frame, for the installer page on
// browsers without a BarcodeDetector. It answers 422 no_code when the frame
// holds none; the page then sends its next frame.
func (a *API) decodeQR(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "image/png") && !strings.HasPrefix(ct, "image/jpeg") {
		writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the frame as image/png or image/jpeg")
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxFrameBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "too_large", "frame larger than 4 MiB")
			return
		}
		a.fail(w, err)
		return
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "not a PNG or JPEG image")
		return
	}
	if cfg.Width*cfg.Height > maxFramePixels {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", "frame larger than 4096x4096 pixels")
		return
	}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid", "not a PNG or JPEG image")
		return
	}
	text, err := readQR(img)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, "no_code", "no QR code found in the frame")
		return
	}
	writeJSON(w, 200, QRText{Text: text})
}

// readQR finds and decodes one QR code in img. A camera frame is searched
// for the code's finder patterns. When that fails, img is read as the code
// alone (a label's own PNG, or a frame cropped to the code): on those, the
// finder search misjudges the code's size for about 1 label in 17
// (TestReadQRLabels), while the code's own corners never mislead.
func readQR(img image.Image) (string, error) {
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		return "", err
	}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_TRY_HARDER: true})
	if err != nil {
		var errPure error
		if res, errPure = qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_PURE_BARCODE: true}); errPure != nil {
			return "", err
		}
	}
	return res.GetText(), nil
}
