package coap

import (
	"bytes"
	"encoding/hex"
	"sync"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	udpclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/bootstrap"
	"github.com/provisiond/provisiond/transport/wire"
)

// observers is our Observe registry for /config (go-coap keeps none on the
// server side): per device, the sessions and tokens that asked to be told.
type observers struct {
	mu  sync.Mutex
	all map[uuid.UUID]map[string]*observer
}

type observer struct {
	cc     *udpclient.Conn
	token  message.Token
	format wire.Format
	seq    uint32
}

func (s *Server) peerOf(w mux.ResponseWriter, f wire.Format) (peer, bool) {
	p, ok := w.Conn().Context().Value(peerKey{}).(peer)
	if !ok {
		body, _ := wire.Marshal(f, wire.Error{Code: bootstrap.CodeUnauthorized, Message: "needs the device certificate on the DTLS session"})
		reply(w, bootstrap.Answer{Status: bootstrap.Unauthorized, Format: f, Body: body})
	}
	return p, ok
}

func answerFormat(m *mux.Message) wire.Format {
	if a, err := m.Accept(); err == nil {
		return wire.Format(a)
	}
	if cf, err := m.ContentFormat(); err == nil {
		return wire.Format(cf)
	}
	return wire.CBOR
}

func (s *Server) getConfig(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		methodNotAllowed(w, "GET")
		return
	}
	f := answerFormat(m)
	if f != wire.CBOR && f != wire.JSON {
		_ = w.SetResponse(codes.NotAcceptable, message.TextPlain, bytes.NewReader([]byte("accept 60 (CBOR) or 50 (JSON)")))
		return
	}
	p, ok := s.peerOf(w, f)
	if !ok || s.cfg.ConfigSource == nil {
		return
	}
	cfg, err := s.cfg.ConfigSource(m.Context(), p.id)
	if err != nil {
		reply(w, h.Error(f, err))
		return
	}
	body, err := wire.Marshal(f, bootstrap.Config(p.id, cfg))
	if err != nil {
		reply(w, h.Error(f, err))
		return
	}
	obs, obsErr := m.Observe()
	cc, isUDP := w.Conn().(*udpclient.Conn)
	switch {
	case obsErr == nil && obs == 0 && isUDP:
		seq := s.obs.add(p.id, cc, m.Token(), f)
		_ = w.SetResponse(codes.Content, message.MediaType(f), bytes.NewReader(body))
		w.Message().SetObserve(seq)
		return
	case obsErr == nil && obs == 1 && isUDP:
		s.obs.remove(p.id, cc, m.Token())
	}
	_ = w.SetResponse(codes.Content, message.MediaType(f), bytes.NewReader(body))
}

// devicePost is what every POST from an enrolled device starts with: the
// method, a CBOR or JSON content-format, the certificate identity on the
// session and a body of at most limit bytes. It answers and returns false
// when one of them is wrong.
func (s *Server) devicePost(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message, limit int) (wire.Format, peer, []byte, bool) {
	if m.Code() != codes.POST {
		methodNotAllowed(w, "POST")
		return 0, peer{}, nil, false
	}
	cf, err := m.ContentFormat()
	f := wire.Format(cf)
	if err != nil || (f != wire.CBOR && f != wire.JSON) {
		reply(w, bootstrap.Answer{Status: bootstrap.UnsupportedFormat, Body: []byte("use content-format 60 (CBOR) or 50 (JSON)")})
		return 0, peer{}, nil, false
	}
	p, ok := s.peerOf(w, f)
	if !ok {
		return 0, peer{}, nil, false
	}
	body, err := readBody(m, limit)
	if err != nil {
		reply(w, h.TooLarge(f))
		return 0, peer{}, nil, false
	}
	return f, p, body, true
}

func (s *Server) postState(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message) {
	f, p, body, ok := s.devicePost(h, w, m, 1024)
	if !ok {
		return
	}
	if s.cfg.Report == nil {
		reply(w, bootstrap.Answer{Status: bootstrap.NotFound, Body: []byte("state reports are not enabled")})
		return
	}
	var rep wire.StateReport
	if err := wire.Unmarshal(f, body, &rep); err != nil {
		reply(w, h.Error(f, enroll.ErrInvalid))
		return
	}
	if err := s.cfg.Report(m.Context(), p.id, enroll.StateReport{ConfigVersion: rep.ConfigVersion, FirmwareVersion: rep.FirmwareVersion,
		Health: rep.Health}, sourceOf(w).String()); err != nil {
		reply(w, h.Error(f, err))
		return
	}
	_ = w.SetResponse(codes.Changed, message.MediaType(f), bytes.NewReader(nil))
}

func obsKey(cc *udpclient.Conn, token message.Token) string {
	return cc.RemoteAddr().String() + "/" + hex.EncodeToString(token)
}

// add registers an observer and returns the first Observe sequence number.
func (o *observers) add(id uuid.UUID, cc *udpclient.Conn, token message.Token, f wire.Format) uint32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.all == nil {
		o.all = map[uuid.UUID]map[string]*observer{}
	}
	if o.all[id] == nil {
		o.all[id] = map[string]*observer{}
	}
	k := obsKey(cc, token)
	first := o.all[id][k] == nil
	ob := &observer{cc: cc, token: append(message.Token(nil), token...), format: f, seq: 2}
	o.all[id][k] = ob
	if first {
		cc.AddOnClose(func() { o.remove(id, cc, token) })
	}
	return 2
}

func (o *observers) remove(id uuid.UUID, cc *udpclient.Conn, token message.Token) {
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.all[id], obsKey(cc, token))
	if len(o.all[id]) == 0 {
		delete(o.all, id)
	}
}

func (o *observers) of(id uuid.UUID) []*observer {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]*observer, 0, len(o.all[id]))
	for _, ob := range o.all[id] {
		ob.seq++
		cp := *ob
		out = append(out, &cp)
	}
	return out
}

// ConfigChanged sends the new config to every session observing the
// device's /config (enroll.Notifier).
func (s *Server) ConfigChanged(id uuid.UUID, cfg enroll.DeviceConfig) {
	for _, ob := range s.obs.of(id) {
		body, err := wire.Marshal(ob.format, bootstrap.Config(id, cfg))
		if err != nil {
			continue
		}
		msg := ob.cc.AcquireMessage(ob.cc.Context())
		msg.SetCode(codes.Content)
		msg.SetToken(ob.token)
		msg.SetContentFormat(message.MediaType(ob.format))
		msg.SetObserve(ob.seq)
		msg.SetBody(bytes.NewReader(body))
		err = ob.cc.WriteMessage(msg)
		ob.cc.ReleaseMessage(msg)
		if err != nil {
			s.log.Info("config notification failed; observer dropped", "device_id", id, "err", err)
			s.obs.remove(id, ob.cc, ob.token)
		}
	}
}

var _ enroll.Notifier = (*Server)(nil)

func (s *Server) renew(h *bootstrap.Handler, w mux.ResponseWriter, m *mux.Message) {
	f, p, body, ok := s.devicePost(h, w, m, wire.MaxRequestBytes)
	if !ok {
		return
	}
	reply(w, h.Renew(m.Context(), f, p.id, p.certSerial, body, sourceOf(w)))
}
