package simulator

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"

	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/transport/wire"
)

// FirmwareOptions describe what a simulated device knows of itself when it
// decides whether to install an image.
type FirmwareOptions struct {
	Floor      string // never below this version
	Bootloader string // default "1.0"
	Hardware   string // default "1.0"
	// Chunk, when set, downloads the image in Range requests of this many
	// bytes (resuming where the last one ended), as a device with little
	// memory does.
	Chunk int64
	// CoAP downloads over CoAP/DTLS, block-wise, instead of HTTPS.
	CoAP bool
}

// UpdateFirmware installs a firmware target the way a real device must:
// verify the manifest's signature with the key from the enrollment answer,
// check that the manifest is the target's and allowed on this device,
// download the image over HTTPS with the device certificate (in Range
// chunks if asked), check its size and digest, and only then "install" it.
// It returns the manifest it installed.
func (d *Device) UpdateFirmware(ctx context.Context, t *wire.FirmwareTarget, o FirmwareOptions) (firmware.Manifest, error) {
	if d.Enrollment == nil || t == nil {
		return firmware.Manifest{}, errors.New("update firmware: no enrollment or no target")
	}
	block, _ := pem.Decode([]byte(d.Enrollment.FirmwareKey))
	if block == nil {
		return firmware.Manifest{}, errors.New("update firmware: the enrollment answer carried no firmware key")
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	pub, ok := k.(ed25519.PublicKey)
	if err != nil || !ok {
		return firmware.Manifest{}, fmt.Errorf("update firmware: firmware key: %v", err)
	}
	m, err := firmware.Verify(pub, firmware.Signed{Manifest: t.Manifest, Signature: t.Signature})
	if err != nil {
		return m, err
	}
	if m.Version != t.Version || m.SHA256 != t.SHA256 || m.Size != t.Size {
		return m, fmt.Errorf("%w: the config's target (%s %s) is not its signed manifest's (%s %s)", firmware.ErrImageMismatch, t.Version, t.SHA256, m.Version, m.SHA256)
	}
	if o.Bootloader == "" {
		o.Bootloader = "1.0"
	}
	if o.Hardware == "" {
		o.Hardware = "1.0"
	}
	if err := m.Allows(firmware.Device{Model: d.Bundle.Model, Floor: o.Floor, Bootloader: o.Bootloader, Hardware: o.Hardware}); err != nil {
		return m, err
	}
	scheme := "https://"
	if o.CoAP {
		scheme = "coaps://"
	}
	uri := ""
	for _, u := range t.URIs {
		if strings.HasPrefix(u, scheme) {
			uri = u
			break
		}
	}
	if uri == "" {
		return m, fmt.Errorf("update firmware: the target has no %s URI", scheme)
	}
	var img []byte
	if o.CoAP {
		img, err = d.DownloadCoAP(ctx, uri, 0)
	} else {
		img, err = d.download(ctx, uri, m.Size, o.Chunk)
	}
	if err != nil {
		return m, err
	}
	if err := m.CheckImage(bytes.NewReader(img)); err != nil {
		return m, err
	}
	d.mu.Lock()
	d.firmware = m.Version
	d.mu.Unlock()
	return m, nil
}

// FirmwareVersion is the version the device runs ("sim-1.0.0" until it
// installs one).
func (d *Device) FirmwareVersion() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.firmware == "" {
		return "sim-1.0.0"
	}
	return d.firmware
}

// download fetches size bytes with the device certificate, in Range
// requests of chunk bytes (one request when chunk is 0).
func (d *Device) download(ctx context.Context, uri string, size, chunk int64) ([]byte, error) {
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.roots, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12, CurvePreferences: d.curves()}}}
	defer hc.CloseIdleConnections()
	buf := make([]byte, 0, size)
	for int64(len(buf)) < size {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
		if err != nil {
			return nil, err
		}
		if chunk > 0 || len(buf) > 0 {
			end := size - 1
			if chunk > 0 {
				end = min(end, int64(len(buf))+chunk-1)
			}
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", len(buf), end))
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("download firmware: %w", err)
		}
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			return nil, fmt.Errorf("download firmware: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		}
		part, err := io.ReadAll(io.LimitReader(resp.Body, size-int64(len(buf))+1))
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("download firmware: %w", err)
		}
		if len(part) == 0 {
			return nil, errors.New("download firmware: the server sent nothing")
		}
		buf = append(buf, part...)
		if int64(len(buf)) > size {
			return nil, fmt.Errorf("%w: longer than %d bytes", firmware.ErrImageMismatch, size)
		}
		if resp.StatusCode == http.StatusOK {
			break // the whole image in one answer
		}
	}
	return buf, nil
}

// DownloadCoAP fetches a firmware image over CoAP/DTLS with the device
// certificate, one block of 1024 bytes per request (Block2, RFC 7959),
// from block fromBlock on: a device resumes an interrupted download by
// asking for the first block it lacks.
func (d *Device) DownloadCoAP(ctx context.Context, uri string, fromBlock uint32) ([]byte, error) {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "coaps" {
		return nil, fmt.Errorf("download firmware: %q is not a coaps:// URI", uri)
	}
	cert, err := d.TLSCertificate()
	if err != nil {
		return nil, err
	}
	// The blocks are asked for here, one by one, not by go-coap.
	conn, err := d.dial(ctx, "coaps://"+u.Host, cert, options.WithBlockwise(false, blockwise.SZX1024, time.Minute))
	if err != nil {
		return nil, fmt.Errorf("download firmware: dtls dial: %w", err)
	}
	defer conn.Close()
	var out []byte
	for num := int64(fromBlock); ; num++ {
		req, err := conn.NewGetRequest(ctx, u.Path)
		if err != nil {
			return nil, err
		}
		opt, err := blockwise.EncodeBlockOption(blockwise.SZX1024, num, false)
		if err != nil {
			return nil, err
		}
		req.SetOptionUint32(message.Block2, opt)
		resp, err := conn.Do(req)
		if err != nil {
			return nil, fmt.Errorf("download firmware: block %d: %w", num, err)
		}
		body, err := resp.ReadBody()
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if resp.Code() != codes.Content {
			return nil, fmt.Errorf("download firmware: block %d: %v: %s", num, resp.Code(), body)
		}
		more := false
		if v, err := resp.GetOptionUint32(message.Block2); err == nil {
			var got int64
			if _, got, more, err = blockwise.DecodeBlockOption(v); err != nil || got != num {
				return nil, fmt.Errorf("download firmware: asked for block %d, got %d (%v)", num, got, err)
			}
		}
		out = append(out, body...)
		if !more {
			return out, nil
		}
	}
}
