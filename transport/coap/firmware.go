package coap

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/provisiond/provisiond/transport/wire"
)

// FirmwareImages hands firmware images to devices.
type FirmwareImages interface {
	// DeviceImage returns the image with this digest if it is one of the
	// device's model; ErrNoImage otherwise.
	DeviceImage(ctx context.Context, id uuid.UUID, digest string) (io.ReadSeeker, error)
}

// ErrNoImage is returned by FirmwareImages when the device may not have
// the image (no such digest, or another model's).
var ErrNoImage = errors.New("no image of the device's model has that digest")

// getFirmware answers the whole image; go-coap sends it block-wise (Block2,
// RFC 7959) in blocks of up to 1024 bytes, and a GET that asks for block N
// gets the image from block N on, which is how a device resumes.
func (s *Server) getFirmware(w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		methodNotAllowed(w, "GET")
		return
	}
	p, ok := s.peerOf(w, wire.CBOR)
	if !ok {
		return
	}
	var digest string
	if m.RouteParams != nil {
		digest = m.RouteParams.Vars["digest"]
	}
	if s.cfg.Firmware == nil {
		_ = w.SetResponse(codes.NotFound, message.TextPlain, textBody("firmware is not enabled on this server"))
		return
	}
	img, err := s.cfg.Firmware.DeviceImage(m.Context(), p.id, digest)
	if err != nil {
		code := codes.InternalServerError
		if errors.Is(err, ErrNoImage) {
			code = codes.NotFound
		}
		_ = w.SetResponse(code, message.TextPlain, textBody(err.Error()))
		return
	}
	_ = w.SetResponse(codes.Content, message.AppOctets, img)
	if len(digest) >= 16 {
		w.Message().SetOptionBytes(message.ETag, []byte(digest[:16]))
	}
}

func textBody(s string) io.ReadSeeker { return strings.NewReader(s) }
