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
	if len(t.URIs) == 0 {
		return m, errors.New("update firmware: the target has no download URI")
	}
	img, err := d.download(ctx, t.URIs[0], m.Size, o.Chunk)
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
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: d.roots, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}}}
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
