package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"

	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// BenchmarkFirmwareDownload measures firmware downloads, devices in
// parallel, each over its own mutual DTLS (CoAP block-wise, one 1024-byte
// block per request) or mutual TLS (HTTPS) session, the devices on the same
// machine as the server. MB/s is image bytes delivered per second across
// all devices. docs/performance.md.
func BenchmarkFirmwareDownload(b *testing.B) {
	for _, transport := range []string{"coap", "https"} {
		for _, devices := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/devices=%d", transport, devices), func(b *testing.B) {
				benchDownload(b, transport, devices, 256<<10)
			})
		}
	}
}

func benchDownload(b *testing.B, transport string, n, size int) {
	env := servertest.Start(b)
	env.Site("bench", "10.0.0.0/16")
	outs, sum := simulator.Run(context.Background(), env.Mint(n, "bench"), simulator.RunOptions{Concurrency: 16})
	if sum.Enrolled != n {
		b.Fatal(sum)
	}
	img := make([]byte, size)
	rand.Read(img)
	added := env.AddFirmware("TEST", "1.0", img)
	if err := env.Client.Do(context.Background(), "PUT", "/api/v1/firmware/rollouts", httpapi.RolloutRequest{Model: "TEST", Version: "1.0", Percent: 100}, nil); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(n * size))
	b.ResetTimer()
	for range b.N {
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for _, o := range outs {
			wg.Go(func() {
				var err error
				var got []byte
				if transport == "coap" {
					got, err = o.Device.DownloadCoAP(context.Background(), "coaps://"+env.CoAPS()+"/fw/"+added.Manifest.SHA256, 0)
				} else {
					_, err = o.Device.UpdateFirmware(context.Background(), targetOf(added, env), simulator.FirmwareOptions{})
					got = img
				}
				if err == nil && !bytes.Equal(got, img) {
					err = fmt.Errorf("%d bytes, not the image", len(got))
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

// targetOf is the HTTPS target a device's config would carry for an image.
func targetOf(a httpapi.FirmwareAdded, env *servertest.Env) *wire.FirmwareTarget {
	return &wire.FirmwareTarget{Version: a.Manifest.Version, Size: a.Manifest.Size, SHA256: a.Manifest.SHA256,
		URIs:     []string{"https://" + env.Server.HTTPAddr().String() + "/fw/" + a.Manifest.SHA256},
		Manifest: a.Signed.Manifest, Signature: a.Signed.Signature}
}
