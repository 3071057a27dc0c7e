package lwm2m

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
)

// Content-formats of LwM2M payloads.
const (
	FormatTLV       = message.MediaType(11542)
	FormatSenMLJSON = message.MediaType(110)
	FormatSenMLCBOR = message.MediaType(112)
)

// Peer is the device's side of the session a bootstrap server sends its
// requests on: the DTLS session the device's Bootstrap-Request came on
// (go-coap's *udpclient.Conn is one).
type Peer interface {
	Get(ctx context.Context, path string, opts ...message.Option) (*pool.Message, error)
	Put(ctx context.Context, path string, cf message.MediaType, body io.ReadSeeker, opts ...message.Option) (*pool.Message, error)
	Post(ctx context.Context, path string, cf message.MediaType, body io.ReadSeeker, opts ...message.Option) (*pool.Message, error)
	Delete(ctx context.Context, path string, opts ...message.Option) (*pool.Message, error)
	ReleaseMessage(m *pool.Message)
}

// Plan is what one bootstrap writes, in the format the client asked for.
type Plan struct {
	Format    message.MediaType // FormatTLV, FormatSenMLCBOR or FormatSenMLJSON
	Instances []Instance
	// Commit, when set, runs after the client accepted every Write and
	// before Bootstrap-Finish: what the bootstrap gave is recorded there,
	// and an error from it ends the bootstrap without a Finish (the client
	// discards what was written and bootstraps again later).
	Commit func(ctx context.Context) error
}

// ErrClient is a client's refusal of a bootstrap step; the *StepError
// wrapping it says which step and what the client answered.
var ErrClient = errors.New("the LwM2M client refused a bootstrap step")

// StepError is a client's answer to one step that was not the expected one.
type StepError struct {
	Op, Path   string
	Code       codes.Code
	Diagnostic string // the answer's payload, when it carried text
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("bootstrap %s %s: the client answered %v", e.Op, e.Path, e.Code)
	if e.Diagnostic != "" {
		msg += ": " + e.Diagnostic
	}
	return msg
}

func (e *StepError) Unwrap() error { return ErrClient }

// Bootstrap runs the server-initiated part of a client-initiated bootstrap
// (OMA-TS-LightweightM2M_Core §5.2.7), after the server answered the
// client's Bootstrap-Request (and, where it wished, Discover): Bootstrap-
// Delete of "/" (the client keeps its bootstrap server account), a
// Bootstrap-Write of each instance of the plan (PUT /Object/Instance), the
// plan's Commit, then Bootstrap-Finish (POST /bs). It stops at the first
// answer that is not the expected one (a 4.06 on Finish: the client found
// the configuration inconsistent), or when ctx ends: the client never
// answered. go-coap retransmits confirmable requests by itself.
func Bootstrap(ctx context.Context, p Peer, plan Plan) error {
	if err := step(ctx, p, "Delete", "/", codes.Deleted, func() (*pool.Message, error) { return p.Delete(ctx, "/") }); err != nil {
		return err
	}
	for _, in := range plan.Instances {
		body, err := EncodeInstance(in, plan.Format)
		if err != nil {
			return err
		}
		path := NewPath(in.Object, in.ID).String()
		if err := step(ctx, p, "Write", path, codes.Changed, func() (*pool.Message, error) {
			return p.Put(ctx, path, plan.Format, bytes.NewReader(body))
		}); err != nil {
			return err
		}
	}
	if plan.Commit != nil {
		if err := plan.Commit(ctx); err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
	}
	return step(ctx, p, "Finish", "/bs", codes.Changed, func() (*pool.Message, error) {
		return p.Post(ctx, "/bs", message.TextPlain, bytes.NewReader(nil))
	})
}

// Discovered is what a client's answer to Bootstrap-Discover says: the
// LwM2M version it speaks and the objects it has.
type Discovered struct {
	Version string          // the lwm2m attribute of "</>", e.g. "1.1"; "" when not given
	Objects map[uint16]bool // objects listed, with or without instances
}

// Has says whether the client listed object (a client that does not answer
// Discover, as an LwM2M 1.0 client may not, is taken to have everything).
func (d Discovered) Has(object uint16) bool { return d.Objects == nil || d.Objects[object] }

// Discover sends Bootstrap-Discover (GET / with Accept link-format). A
// client that does not support it (4.04, 4.05) is not an error: the
// bootstrap goes on blind, as with LwM2M 1.0.
func Discover(ctx context.Context, p Peer) (Discovered, error) {
	resp, err := p.Get(ctx, "/", message.Option{ID: message.Accept, Value: []byte{byte(message.AppLinkFormat)}})
	if err != nil {
		return Discovered{}, fmt.Errorf("bootstrap Discover /: %w", err)
	}
	defer p.ReleaseMessage(resp)
	if resp.Code() != codes.Content {
		return Discovered{}, nil
	}
	body, err := resp.ReadBody()
	if err != nil {
		return Discovered{}, fmt.Errorf("bootstrap Discover /: %w", err)
	}
	return ParseDiscover(body), nil
}

// ParseDiscover reads a Bootstrap-Discover answer (CoRE link format, e.g.
// `</>;lwm2m=1.1,</0/0>;ssid=101,</1>,</12/0>`), skipping what it does not
// understand.
func ParseDiscover(body []byte) Discovered {
	d := Discovered{Objects: map[uint16]bool{}}
	for _, link := range strings.Split(string(body), ",") {
		target, attrs, _ := strings.Cut(strings.TrimSpace(link), ";")
		if !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			continue
		}
		target = target[1 : len(target)-1]
		if target == "/" {
			for _, a := range strings.Split(attrs, ";") {
				if v, ok := strings.CutPrefix(a, "lwm2m="); ok {
					d.Version = strings.Trim(v, `"`)
				}
			}
			continue
		}
		if p, err := ParsePath(target); err == nil && len(p.IDs) >= 1 {
			d.Objects[p.IDs[0]] = true
		}
	}
	return d
}

func step(ctx context.Context, p Peer, op, path string, want codes.Code, do func() (*pool.Message, error)) error {
	resp, err := do()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bootstrap %s %s: no answer: %w", op, path, ctx.Err())
		}
		return fmt.Errorf("bootstrap %s %s: %w", op, path, err)
	}
	defer p.ReleaseMessage(resp)
	if resp.Code() == want {
		return nil
	}
	e := &StepError{Op: op, Path: path, Code: resp.Code()}
	if body, err := resp.ReadBody(); err == nil && len(body) <= 256 {
		e.Diagnostic = string(body)
	}
	return e
}

// EncodeInstance encodes an instance for a Write in format.
func EncodeInstance(in Instance, format message.MediaType) ([]byte, error) {
	switch format {
	case FormatTLV:
		return in.TLV(), nil
	case FormatSenMLCBOR:
		return EncodeSenML(in.Entries(), true)
	case FormatSenMLJSON:
		return EncodeSenML(in.Entries(), false)
	}
	return nil, fmt.Errorf("lwm2m: content-format %d is not one provisiond writes (TLV 11542, SenML CBOR 112, SenML JSON 110)", format)
}

// DecodeInstance reads what a Write to /object/id carried, in format: the
// resources with their raw values (TLV) or values (SenML). kinds says how to
// read each TLV resource; one not named there is kept as Opaque.
func DecodeInstance(object, id uint16, format message.MediaType, body []byte, kinds map[uint16]Kind) (Instance, error) {
	in := Instance{Object: object, ID: id}
	switch format {
	case FormatTLV:
		entries, err := DecodeTLV(body)
		if err != nil {
			return in, err
		}
		if len(entries) == 1 && entries[0].Type == TLVObjectInstance {
			if entries[0].ID != id {
				return in, fmt.Errorf("%w: TLV instance %d written to /%d/%d", ErrMalformed, entries[0].ID, object, id)
			}
			entries = entries[0].Children
		}
		for _, e := range entries {
			if e.Type != TLVResource {
				return in, fmt.Errorf("%w: TLV entry of type %d where resources go", ErrMalformed, e.Type)
			}
			kind, ok := kinds[e.ID]
			if !ok {
				kind = Opaque
			}
			v, err := FromTLV(kind, e.Value)
			if err != nil {
				return in, fmt.Errorf("resource %d: %w", e.ID, err)
			}
			in.Resources = append(in.Resources, Resource{ID: e.ID, Value: v})
		}
		return in, nil
	case FormatSenMLCBOR, FormatSenMLJSON:
		entries, err := DecodeSenML(body, format == FormatSenMLCBOR)
		if err != nil {
			return in, err
		}
		for _, e := range entries {
			if len(e.Path.IDs) != 3 || e.Path.IDs[0] != object || e.Path.IDs[1] != id {
				return in, fmt.Errorf("%w: SenML record %s written to /%d/%d", ErrMalformed, e.Path, object, id)
			}
			v := e.Value
			if kinds[e.Path.IDs[2]] == Integer {
				n, ok := v.AsInt()
				if !ok {
					return in, fmt.Errorf("%w: %s is not an integer", ErrMalformed, e.Path)
				}
				v = Int(n)
			}
			in.Resources = append(in.Resources, Resource{ID: e.Path.IDs[2], Value: v})
		}
		return in, nil
	}
	return in, fmt.Errorf("%w: content-format %d", ErrMalformed, format)
}

// Kinds are the data types of the resources provisiond writes, per object.
var Kinds = map[uint16]map[uint16]Kind{
	ObjSecurity: {0: String, 1: Boolean, 2: Integer, 3: Opaque, 4: Opaque, 5: Opaque, 10: Integer},
	ObjServer:   {0: Integer, 1: Integer, 6: Boolean, 7: String},
	ObjWLAN:     {0: String, 1: Boolean, 5: String, 8: Integer, 15: Integer, 16: Integer, 18: String},
}
