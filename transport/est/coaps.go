package est

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/transport/coap"
)

// Content-formats of RFC 9148 (IANA CoAP Content-Formats).
const (
	CFCertsOnly = message.MediaType(281) // application/pkcs7-mime; smime-type=certs-only
	CFCSRAttrs  = message.MediaType(285) // application/csrattrs
	CFPKCS10    = message.MediaType(286) // application/pkcs10
	CFPKIXCert  = message.MediaType(287) // application/pkix-cert
)

// CoAPS serves EST over CoAP and DTLS (RFC 9148) on the DTLS listener:
// /.well-known/est/{crts,sen,sren,att} and the same under /est, which
// LwM2M devices use. Payloads are binary DER; block-wise transfer (RFC 7959)
// carries what does not fit a datagram. The DTLS session must be
// authenticated with a client certificate (RFC 9148 §5): a factory
// certificate (IDevID) to enroll, the device's own to re-enroll.
type CoAPS struct{ cfg Config }

// NewCoAPS returns the EST-coaps front end.
func NewCoAPS(cfg Config) *CoAPS {
	cfg.setDefaults()
	return &CoAPS{cfg: cfg}
}

// Resources are the EST-coaps resources, for coap.Config.Resources, with
// their /.well-known/core links (rt="ace.est.*", RFC 9148 §4.1).
func (c *CoAPS) Resources() []coap.Resource {
	var rs []coap.Resource
	for _, root := range []string{"/.well-known/est", "/est"} {
		rs = append(rs,
			coap.Resource{Path: root + "/crts", Handler: mux.HandlerFunc(c.crts), Link: `rt="ace.est.crts";ct="281 287"`},
			coap.Resource{Path: root + "/sen", Handler: mux.HandlerFunc(c.sen), Link: `rt="ace.est.sen";ct="281 287"`},
			coap.Resource{Path: root + "/sren", Handler: mux.HandlerFunc(c.sren), Link: `rt="ace.est.sren";ct="281 287"`},
			coap.Resource{Path: root + "/att", Handler: mux.HandlerFunc(c.att), Link: `rt="ace.est.att";ct=285`},
		)
	}
	return rs
}

// crts answers the CA certificates: a certs-only PKCS#7 of the
// intermediate and the root (281, the default), or the root alone as DER
// (287).
func (c *CoAPS) crts(w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		coapFail(w, codes.MethodNotAllowed, "use GET", 0)
		return
	}
	certs := c.cfg.CACerts()
	accept, ok := acceptOf(m, CFCertsOnly, CFPKIXCert)
	if !ok {
		coapFail(w, codes.NotAcceptable, "accept 281 (application/pkcs7-mime; smime-type=certs-only) or 287 (application/pkix-cert)", 0)
		return
	}
	if accept == CFPKIXCert {
		_ = w.SetResponse(codes.Content, CFPKIXCert, bytes.NewReader(certs[len(certs)-1].Raw))
		return
	}
	der, err := CertsOnly(certs)
	if err != nil {
		c.fail(w, err)
		return
	}
	_ = w.SetResponse(codes.Content, CFCertsOnly, bytes.NewReader(der))
}

func (c *CoAPS) att(w mux.ResponseWriter, m *mux.Message) {
	if m.Code() != codes.GET {
		coapFail(w, codes.MethodNotAllowed, "use GET", 0)
		return
	}
	if _, ok := acceptOf(m, CFCSRAttrs); !ok {
		coapFail(w, codes.NotAcceptable, "accept 285 (application/csrattrs)", 0)
		return
	}
	_ = w.SetResponse(codes.Content, CFCSRAttrs, bytes.NewReader(CSRAttrs()))
}

// sen enrolls the device whose factory certificate authenticated the
// session; a device with provisiond's certificate is renewed as by sren.
func (c *CoAPS) sen(w mux.ResponseWriter, m *mux.Message) {
	defer coap.Answered(w.Conn()) // the bootstrap session's handshake slot
	csr, accept, ok := c.request(w, m)
	if !ok {
		return
	}
	if id, serial, ok := coap.Peer(w); ok {
		c.renew(w, m, id, serial, csr, accept)
		return
	}
	req := enroll.Request{CSR: csr, Source: coap.Source(w), Transport: "estcoaps", Rekey: coap.RekeyAllowed(w)}
	if chain, ok := coap.FactoryPeer(w); ok {
		req.Factory = chain
	} else if id, ok := coap.PSKPeer(w); ok && c.cfg.PSKSerial != nil {
		if req.PSKSerial, ok = c.cfg.PSKSerial(id); !ok {
			coapFail(w, codes.Unauthorized, "the session's PSK identity names no device", 0)
			return
		}
	} else {
		coapFail(w, codes.Unauthorized, "EST-coaps needs a client certificate: a factory certificate (IDevID) to enroll, the device's own to re-enroll (or the LwM2M bootstrap PSK's session)", 0)
		return
	}
	res, err := c.cfg.Service.Enroll(m.Context(), req)
	if err != nil {
		c.fail(w, err)
		return
	}
	c.issued(w, res.Chain[0], accept)
}

func (c *CoAPS) sren(w mux.ResponseWriter, m *mux.Message) {
	csr, accept, ok := c.request(w, m)
	if !ok {
		return
	}
	id, serial, ok := coap.Peer(w)
	if !ok {
		coapFail(w, codes.Unauthorized, "re-enrollment: present the certificate provisiond issued (mutual DTLS)", 0)
		return
	}
	c.renew(w, m, id, serial, csr, accept)
}

func (c *CoAPS) renew(w mux.ResponseWriter, m *mux.Message, id uuid.UUID, serial string, csr []byte, accept message.MediaType) {
	leaf, ok := coap.PeerCertificate(w)
	if !ok {
		coapFail(w, codes.Unauthorized, "re-enrollment: present the certificate provisiond issued (mutual DTLS)", 0)
		return
	}
	if err := keyMatches(csr, leaf); err != nil {
		c.fail(w, err)
		return
	}
	res, err := c.cfg.Service.Renew(m.Context(), id, serial, csr, coap.Source(w), "estcoaps")
	if err != nil {
		c.fail(w, err)
		return
	}
	c.issued(w, res.Chain[0], accept)
}

// request checks an enrollment request: POST, content-format 286 (or
// none), a DER body within the limit, and an answer format the client
// accepts.
func (c *CoAPS) request(w mux.ResponseWriter, m *mux.Message) ([]byte, message.MediaType, bool) {
	if m.Code() != codes.POST {
		coapFail(w, codes.MethodNotAllowed, "use POST", 0)
		return nil, 0, false
	}
	if cf, err := m.ContentFormat(); err == nil && cf != CFPKCS10 {
		coapFail(w, codes.UnsupportedMediaType, "content-format 286 (application/pkcs10)", 0)
		return nil, 0, false
	}
	accept, ok := acceptOf(m, CFCertsOnly, CFPKIXCert)
	if !ok {
		coapFail(w, codes.NotAcceptable, "accept 281 (application/pkcs7-mime; smime-type=certs-only) or 287 (application/pkix-cert)", 0)
		return nil, 0, false
	}
	var body []byte
	if m.Body() != nil {
		if n, err := m.BodySize(); err == nil && n > c.cfg.MaxBodyBytes {
			coapFail(w, codes.RequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", c.cfg.MaxBodyBytes), 0)
			return nil, 0, false
		}
		var err error
		if body, err = io.ReadAll(io.LimitReader(m.Body(), c.cfg.MaxBodyBytes+1)); err != nil {
			coapFail(w, codes.BadRequest, "cannot read the body", 0)
			return nil, 0, false
		}
		if int64(len(body)) > c.cfg.MaxBodyBytes {
			coapFail(w, codes.RequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", c.cfg.MaxBodyBytes), 0)
			return nil, 0, false
		}
	}
	csr, err := DecodeCSR(body)
	if err != nil {
		c.fail(w, err)
		return nil, 0, false
	}
	return csr, accept, true
}

func (c *CoAPS) issued(w mux.ResponseWriter, leaf *x509.Certificate, accept message.MediaType) {
	if accept == CFPKIXCert {
		_ = w.SetResponse(codes.Changed, CFPKIXCert, bytes.NewReader(leaf.Raw))
		return
	}
	der, err := CertsOnly([]*x509.Certificate{leaf})
	if err != nil {
		c.fail(w, err)
		return
	}
	_ = w.SetResponse(codes.Changed, CFCertsOnly, bytes.NewReader(der))
}

// fail answers an error as RFC 9148 §4.7 and §5 have it: a CoAP error code
// and a diagnostic payload; where the request cannot be decided yet (the
// device is not claimed) or the server is short, 5.03 with Max-Age telling
// when to ask again.
func (c *CoAPS) fail(w mux.ResponseWriter, err error) {
	code, msg, retry := CoAPAnswer(err)
	if code == codes.InternalServerError {
		c.cfg.Log.Error("EST-coaps request failed", "err", err)
	}
	coapFail(w, code, msg, retry)
}

// CoAPAnswer is how an enrollment's error is answered over CoAP: the code,
// the diagnostic payload and the Max-Age to send (0: none). A device not
// claimed yet gets 5.03 with Max-Age, as RFC 9148 §5 has it for EST-coaps.
func CoAPAnswer(err error) (codes.Code, string, time.Duration) {
	o := Classify(err)
	code := map[int]codes.Code{202: codes.ServiceUnavailable, 400: codes.BadRequest, 401: codes.Unauthorized,
		403: codes.Forbidden, 429: codes.TooManyRequests, 503: codes.ServiceUnavailable}[o.HTTP]
	if code == 0 {
		code = codes.InternalServerError
	}
	return code, o.Message, o.RetryAfter
}

// CoAPFail answers w with code, the diagnostic msg and, when retry is set,
// Max-Age in whole seconds.
func CoAPFail(w mux.ResponseWriter, code codes.Code, msg string, retry time.Duration) {
	coapFail(w, code, msg, retry)
}

func coapFail(w mux.ResponseWriter, code codes.Code, msg string, retry time.Duration) {
	var opts []message.Option
	if retry > 0 {
		buf := make([]byte, 4)
		n, _ := message.EncodeUint32(buf, uint32(retrySeconds(retry)))
		opts = append(opts, message.Option{ID: message.MaxAge, Value: buf[:n]})
	}
	_ = w.SetResponse(code, message.TextPlain, bytes.NewReader([]byte(msg)), opts...)
}

// acceptOf is the content-format the client accepts among offered (the
// first when it names none).
func acceptOf(m *mux.Message, offered ...message.MediaType) (message.MediaType, bool) {
	a, err := m.Accept()
	if errors.Is(err, message.ErrOptionNotFound) {
		return offered[0], true
	}
	if err != nil {
		return 0, false
	}
	for _, o := range offered {
		if a == o {
			return o, true
		}
	}
	return 0, false
}
