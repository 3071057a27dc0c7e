package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/pki/mfr"
	"github.com/provisiond/provisiond/transport/wire"
)

// Client calls the ops API; provctl is built on it.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient returns a client for the API at server (https://host:port),
// trusting rootPEM for the server certificate and sending token.
func NewClient(server, token string, rootPEM []byte) (*Client, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("server %q: want https://host:port", server)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(rootPEM) {
		return nil, fmt.Errorf("CA file holds no PEM certificate")
	}
	return &Client{base: u, token: strings.TrimSpace(token), http: &http.Client{
		Timeout:   5 * time.Minute,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}}, nil
}

// BaseURL is the server's URL.
func (c *Client) BaseURL() string { return c.base.String() }

// APIError is an error answer from the server.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d): %s", e.Code, e.Status, e.Message)
}

// Do sends a request with an optional JSON body and decodes a JSON answer into out.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	if in == nil {
		return c.DoRaw(ctx, method, path, "", nil, out)
	}
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return c.DoRaw(ctx, method, path, "application/json", bytes.NewReader(b), out)
}

// DoRaw sends a body of any content type (none when contentType is "")
// and decodes a JSON answer into out.
func (c *Client) DoRaw(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	path, query, _ := strings.Cut(path, "?")
	u := c.base.JoinPath(path)
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(raw, &eb) == nil && eb.Error.Code != "" {
			return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return &APIError{Status: resp.StatusCode, Code: http.StatusText(resp.StatusCode), Message: strings.TrimSpace(string(raw))}
	}
	if out == nil || len(raw) == 0 {
		return nil
	}
	if p, ok := out.(*[]byte); ok {
		*p = raw
		return nil
	}
	return json.Unmarshal(raw, out)
}

// Info fetches GET /api/v1/info.
func (c *Client) Info(ctx context.Context) (Info, error) {
	var i Info
	return i, c.Do(ctx, http.MethodGet, "/api/v1/info", nil, &i)
}

// ImportBatch posts a batch.
func (c *Client) ImportBatch(ctx context.Context, b BatchRequest) (BatchResponse, error) {
	var r BatchResponse
	return r, c.Do(ctx, http.MethodPost, "/api/v1/batches", b, &r)
}

// Audit fetches audit events after a sequence number.
// Audit reads a page of the audit log oldest first, after the event with ID
// after ("": from the oldest).
func (c *Client) Audit(ctx context.Context, after string, limit int) (AuditPage, error) {
	var p AuditPage
	return p, c.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/audit?after=%s&limit=%d", url.QueryEscape(after), limit), nil, &p)
}

// AuditNewest reads a page of the audit log newest first, before the event
// with ID before ("": from the newest).
func (c *Client) AuditNewest(ctx context.Context, before string, limit int) (AuditPage, error) {
	var p AuditPage
	return p, c.Do(ctx, http.MethodGet, fmt.Sprintf("/api/v1/audit?before=%s&limit=%d", url.QueryEscape(before), limit), nil, &p)
}

// Minted is a freshly minted batch: the flash bundles (with their claim
// tokens, which never went to the server) and, for devices without a site,
// their label claim codes.
type Minted struct {
	Batch   BatchResponse
	Bundles []wire.Bundle
	Codes   []enroll.ClaimCode // nil when the batch is pre-assigned to a site
}

// Mint makes n serials and claim tokens of a model here, registers them with
// the server by their hashes (pre-assigned to site when given, else with label
// claim codes), and returns the bundles to flash.
func (c *Client) Mint(ctx context.Context, model string, n int, site string) (Minted, error) {
	return c.MintWith(ctx, MintOptions{Model: model, Count: n, Site: site})
}

// MintOptions say what a minted batch is.
type MintOptions struct {
	Model string
	Count int
	Site  string // pre-assigned site; "" gives each device a claim code
	// LwM2MPSK gives each device an LwM2M bootstrap PSK (32 random bytes),
	// in its bundle and, sealed, in the inventory.
	LwM2MPSK bool
}

// MintWith mints a batch as Mint does, with the options.
func (c *Client) MintWith(ctx context.Context, o MintOptions) (Minted, error) {
	model, n, site := o.Model, o.Count, o.Site
	info, err := c.Info(ctx)
	if err != nil {
		return Minted{}, err
	}
	m := Minted{Bundles: make([]wire.Bundle, n)}
	rows := make([]enroll.ManifestRow, n)
	if site == "" {
		m.Codes = make([]enroll.ClaimCode, n)
	}
	for i := range n {
		serial, tok := enroll.NewSerial(model), enroll.NewClaimToken()
		m.Bundles[i] = wire.Bundle{Serial: serial, ClaimToken: tok, RootCA: info.RootCA, Endpoints: info.Endpoints, Model: model}
		rows[i] = enroll.ManifestRow{Serial: serial, ClaimTokenHash: enroll.FormatTokenHash(enroll.HashToken(tok))}
		if m.Codes != nil {
			m.Codes[i] = enroll.NewClaimCode(serial)
			rows[i].ClaimCodeHash = enroll.FormatTokenHash(m.Codes[i].Hash())
		}
		if o.LwM2MPSK {
			psk := make([]byte, 32)
			if _, err := rand.Read(psk); err != nil {
				return Minted{}, err
			}
			m.Bundles[i].LwM2MPSK = hex.EncodeToString(psk)
			rows[i].LwM2MPSK = m.Bundles[i].LwM2MPSK
		}
	}
	if m.Batch, err = c.ImportBatch(ctx, BatchRequest{Model: model, Site: site, Source: "mint", Rows: rows}); err != nil {
		return Minted{}, err
	}
	if m.Batch.Created != n {
		return Minted{}, fmt.Errorf("mint: the server registered %d of %d devices (serial collision?)", m.Batch.Created, n)
	}
	return m, nil
}

// AddFactoryCA registers a manufacturer CA.
func (c *Client) AddFactoryCA(ctx context.Context, req FactoryCARequest) (FactoryCAView, error) {
	var v FactoryCAView
	return v, c.Do(ctx, http.MethodPost, "/api/v1/factory/cas", req, &v)
}

// FactoryCAs lists the registered manufacturer CAs.
func (c *Client) FactoryCAs(ctx context.Context) ([]FactoryCAView, error) {
	var l factoryCAList
	return l.CAs, c.Do(ctx, http.MethodGet, "/api/v1/factory/cas", nil, &l)
}

// RemoveFactoryCA removes a manufacturer CA by its ID or a prefix of it.
func (c *Client) RemoveFactoryCA(ctx context.Context, ref string) (FactoryCAView, error) {
	var v FactoryCAView
	return v, c.Do(ctx, http.MethodDelete, "/api/v1/factory/cas/"+url.PathEscape(ref), nil, &v)
}

// AddIDevIDs gives every bundle of m a factory certificate from ca (a
// manufacturer CA whose key is here: a factory's, or a throwaway one).
func (m *Minted) AddIDevIDs(ca *mfr.CA) error {
	for i := range m.Bundles {
		id, err := ca.Issue(m.Bundles[i].Serial, mfr.Options{})
		if err != nil {
			return err
		}
		m.Bundles[i].IDevID = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Cert.Raw}))
		m.Bundles[i].IDevIDKey = string(mfr.KeyPEM(id.Key))
	}
	return nil
}

// RegisterIDevIDs gives every bundle of m a factory certificate from ca and
// registers ca as the manufacturer CA of m's model and batch: a factory line
// in one call (provctl factory mint --idevid, devsim --idevid, tests).
func (c *Client) RegisterIDevIDs(ctx context.Context, m *Minted, ca *mfr.CA) (FactoryCAView, error) {
	if err := m.AddIDevIDs(ca); err != nil {
		return FactoryCAView{}, err
	}
	return c.AddFactoryCA(ctx, FactoryCARequest{Certificate: string(ca.CertPEM()), Model: m.Batch.Batch.Model, Batch: m.Batch.Batch.ID})
}
