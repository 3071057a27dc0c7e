package lwm2m_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	"github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	"github.com/plgd-dev/go-coap/v3/udp"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/transport/lwm2m"
)

// device is an LwM2M client test double on go-coap: it serves the bootstrap
// server's Delete, Writes and Finish on its own session and keeps what was
// written, decoded.
type device struct {
	mu        sync.Mutex
	deleted   int
	written   []lwm2m.Instance
	finished  bool
	finishAns codes.Code    // the answer to Finish; default 2.04
	mute      chan struct{} // set: Writes get no answer until it is closed
	errs      []error
}

func (d *device) handle(w mux.ResponseWriter, m *mux.Message) {
	path, _ := m.Options().Path()
	path = strings.TrimPrefix(path, "/")
	if m.Code() == codes.PUT && d.mute != nil {
		<-d.mute // a client that hangs: the server's retransmissions go unanswered
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case m.Code() == codes.DELETE && path == "":
		d.deleted++
		_ = w.SetResponse(codes.Deleted, message.TextPlain, nil)
	case m.Code() == codes.PUT:
		p, err := lwm2m.ParsePath("/" + path)
		if err != nil || len(p.IDs) != 2 {
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, bytes.NewReader([]byte("write an instance")))
			return
		}
		cf, _ := m.ContentFormat()
		body, _ := io.ReadAll(m.Body())
		in, err := lwm2m.DecodeInstance(p.IDs[0], p.IDs[1], cf, body, lwm2m.Kinds[p.IDs[0]])
		if err != nil {
			d.errs = append(d.errs, err)
			_ = w.SetResponse(codes.BadRequest, message.TextPlain, bytes.NewReader([]byte(err.Error())))
			return
		}
		d.written = append(d.written, in)
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
	case m.Code() == codes.POST && path == "bs":
		d.finished = true
		ans := d.finishAns
		if ans == 0 {
			ans = codes.Changed
		}
		_ = w.SetResponse(ans, message.TextPlain, bytes.NewReader([]byte("checked")))
	default:
		_ = w.SetResponse(codes.NotFound, message.TextPlain, nil)
	}
}

// bootstrapOver runs a bootstrap server on loopback UDP (plain CoAP: the
// exchange is the same inside DTLS) that answers the device's
// Bootstrap-Request with 2.04 and then runs plan on the device's session.
func bootstrapOver(t *testing.T, d *device, plan lwm2m.Plan, timeout time.Duration) error {
	t.Helper()
	l, err := net.NewListenUDP("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	result := make(chan error, 1)
	r := mux.NewRouter()
	_ = r.Handle("/bs", mux.HandlerFunc(func(w mux.ResponseWriter, m *mux.Message) {
		cc := w.Conn().(*udpclient.Conn)
		_ = w.SetResponse(codes.Changed, message.TextPlain, nil)
		go func() { // after the answer to the Bootstrap-Request is out
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			result <- lwm2m.Bootstrap(ctx, cc, plan)
		}()
	}))
	srv := udp.NewServer(options.WithMux(r))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Stop(); l.Close() })

	dr := mux.NewRouter()
	dr.DefaultHandle(mux.HandlerFunc(d.handle))
	cc, err := udp.Dial(l.LocalAddr().String(), options.WithMux(dr))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cc.Post(ctx, "/bs", message.TextPlain, bytes.NewReader(nil), message.Option{ID: message.URIQuery, Value: []byte("ep=TH1-0001")})
	if err != nil || resp.Code() != codes.Changed {
		t.Fatalf("Bootstrap-Request: %v %v", resp, err)
	}
	select {
	case err := <-result:
		return err
	case <-time.After(timeout + 10*time.Second):
		t.Fatal("the bootstrap never ended")
		return nil
	}
}

func plan(format message.MediaType) lwm2m.Plan {
	return lwm2m.Plan{Format: format, Instances: []lwm2m.Instance{
		lwm2m.Security{ServerURI: "coaps://lwm2m.example.net:5684", Mode: lwm2m.ModeCertificate, PublicKeyOrIdentity: []byte{0x30, 1},
			ServerPublicKey: []byte{0x30, 2}, SecretKey: []byte{0x30, 3}, ShortServerID: 101}.Instance(1),
		lwm2m.Server{ShortServerID: 101, Lifetime: 300, Binding: "U"}.Instance(0),
		lwm2m.WLAN{InterfaceName: "wlan0", Enable: true, SSID: "Office", AuthenticationMode: 1, KeyPhrase: "correct horse"}.Instance(0),
	}}
}

// A client bootstraps in TLV, SenML CBOR and SenML JSON: everything
// deleted, each instance written as planned, then finished.
func TestBootstrapExchange(t *testing.T) {
	for name, f := range map[string]message.MediaType{"TLV": lwm2m.FormatTLV, "SenML CBOR": lwm2m.FormatSenMLCBOR, "SenML JSON": lwm2m.FormatSenMLJSON} {
		t.Run(name, func(t *testing.T) {
			d := &device{}
			p := plan(f)
			if err := bootstrapOver(t, d, p, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.deleted != 1 || !d.finished || len(d.written) != len(p.Instances) || len(d.errs) > 0 {
				t.Fatalf("deleted %d, finished %v, written %d, errors %v", d.deleted, d.finished, len(d.written), d.errs)
			}
			for i, want := range p.Instances {
				got := d.written[i]
				if got.Object != want.Object || got.ID != want.ID || len(got.Resources) != len(want.Resources) {
					t.Fatalf("instance %d: %+v, want %+v", i, got, want)
				}
				for j, r := range want.Resources {
					g := got.Resources[j]
					if g.ID != r.ID || g.Value.String() != r.Value.String() || !bytes.Equal(g.Value.Bytes, r.Value.Bytes) {
						t.Errorf("/%d/%d/%d = %v, want %v", want.Object, want.ID, r.ID, g.Value, r.Value)
					}
				}
			}
		})
	}
}

// A 4.06 on Finish is the client's refusal, reported with its diagnostic;
// a client that never answers the Writes ends the bootstrap at the deadline.
func TestBootstrapClientErrors(t *testing.T) {
	err := bootstrapOver(t, &device{finishAns: codes.NotAcceptable}, plan(lwm2m.FormatTLV), 5*time.Second)
	var se *lwm2m.StepError
	if !errors.As(err, &se) || !errors.Is(err, lwm2m.ErrClient) || se.Op != "Finish" || se.Code != codes.NotAcceptable || se.Diagnostic != "checked" {
		t.Fatalf("finish refused: %v", err)
	}
	start := time.Now()
	mute := make(chan struct{})
	defer close(mute)
	err = bootstrapOver(t, &device{mute: mute}, plan(lwm2m.FormatTLV), 2*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 8*time.Second {
		t.Fatalf("mute client: %v after %s", err, time.Since(start))
	}
}
