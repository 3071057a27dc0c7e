package floor_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/transport/est"
	"github.com/provisiond/provisiond/transport/wire"
)

// serveBareEST starts the bare EST server on a loopback port: Go's TLS
// and HTTP (HTTP/2 offered, as provisiond does), a client certificate
// requested and, when given, verified to the root by crypto/tls. It
// answers /cacerts, /simpleenroll (HTTP Basic present; the CSR checked and
// signed) and the device's config read over mutual TLS; answered counts
// the config reads, the enrollments' last step.
func serveBareEST(ca *bareCA) (addr string, stop func(), answered *atomic.Int64, err error) {
	roots := x509.NewCertPool()
	roots.AddCert(ca.root)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	answered = new(atomic.Int64)
	cacerts, err := est.CertsOnly([]*x509.Certificate{ca.inter, ca.root})
	if err != nil {
		return "", nil, nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+est.PathPrefix+"/cacerts", func(w http.ResponseWriter, _ *http.Request) {
		writeBase64(w, cacerts)
	})
	mux.HandleFunc("POST "+est.PathPrefix+"/simpleenroll", func(w http.ResponseWriter, r *http.Request) {
		serial, token, ok := r.BasicAuth()
		if !ok || token == "" {
			http.Error(w, "HTTP Basic required", http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxRequestBytes))
		var der []byte
		if err == nil {
			der, err = est.DecodeCSR(body)
		}
		var cert []byte
		if err == nil {
			_, cert, err = ca.issue(der, serial)
		}
		var leaf *x509.Certificate
		if err == nil {
			leaf, err = x509.ParseCertificate(cert)
		}
		var out []byte
		if err == nil {
			out, err = est.CertsOnly([]*x509.Certificate{leaf})
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeBase64(w, out)
	})
	mux.HandleFunc("GET /device/v1/config", func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "a device certificate is required", http.StatusUnauthorized)
			return
		}
		id, err := uuid.Parse(r.TLS.VerifiedChains[0][0].Subject.CommonName)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		out, err := json.Marshal(bareConfig(id))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		answered.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(out)
	})
	srv := &http.Server{Handler: mux, TLSConfig: &tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{ca.serverCert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: roots, NextProtos: []string{"h2", "http/1.1"},
	}}
	done := make(chan struct{})
	go func() { _ = srv.ServeTLS(ln, "", ""); close(done) }()
	return ln.Addr().String(), func() { _ = srv.Close(); <-done }, answered, nil
}

// writeBase64 answers DER as EST does: base64, Content-Transfer-Encoding
// saying so.
func writeBase64(w http.ResponseWriter, der []byte) {
	w.Header().Set("Content-Type", est.MediaCertsOnly)
	w.Header().Set("Content-Transfer-Encoding", "base64")
	_, _ = io.WriteString(w, base64.StdEncoding.EncodeToString(der))
}
