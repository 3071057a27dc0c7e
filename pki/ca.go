package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"text/template"
	"time"

	"github.com/provisiond/provisiond/internal/atomicfile"

	"github.com/provisiond/provisiond/pki/profile"

	"github.com/google/uuid"
	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	// Registers the software KMS that SoftCAS uses to create CA keys.
	_ "go.step.sm/crypto/kms/softkms"
)

// DefaultDeviceTemplate is the x509util template for device certificates. It
// sees .DeviceID, .DeviceURI, .Serial, .Model, .Site and .Insecure.CR (the
// CSR). Whatever a template says, the server sets the subject common name
// and the urn:uuid URI SAN to the device's identity.
const DefaultDeviceTemplate = `{
	"subject": {"commonName": {{ toJson .DeviceID }}, "serialNumber": {{ toJson .Serial }}},
	"uris": [{{ toJson .DeviceURI }}],
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"]
}`

// File names inside the CA directory.
const (
	RootCertFile         = "root.pem"
	RootKeyFile          = "root.key"
	IntermediateCertFile = "intermediate.pem"
	IntermediateKeyFile  = "intermediate.key"
)

// Config configures the CA.
type Config struct {
	Dir            string        // holds the CA certificates and encrypted keys
	Passphrase     []byte        // encrypts the CA keys at rest
	DeviceLifetime time.Duration // default 90 days
	DeviceTemplate string        // x509util template text; default DefaultDeviceTemplate
	Backdate       time.Duration // NotBefore = now - Backdate, for device clock skew; default 1m
	Name           string        // CA common-name prefix; default "provisiond"
}

func (c *Config) setDefaults() {
	if c.DeviceLifetime == 0 {
		c.DeviceLifetime = 90 * 24 * time.Hour
	}
	if c.DeviceTemplate == "" {
		c.DeviceTemplate = DefaultDeviceTemplate
	}
	if c.Backdate == 0 {
		c.Backdate = time.Minute
	}
	if c.Name == "" {
		c.Name = "provisiond"
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("pki.dir: required")
	case len(c.Passphrase) < 16:
		return errors.New("pki.passphrase: at least 16 bytes")
	case c.DeviceLifetime < time.Hour:
		return errors.New("pki.device_lifetime: at least 1h")
	}
	return nil
}

// CA is the embedded certificate authority. It is safe for concurrent use.
type CA struct {
	cfg          Config
	root         *x509.Certificate
	intermediate *x509.Certificate
	cas          *softcas.SoftCAS
	signer       crypto.Signer // the intermediate's key (CRL, OCSP)
	tmpl         *template.Template
	roots        *x509.CertPool

	responderMu sync.Mutex
	responder   *ocspResponder // the delegated OCSP signer, made on first use
}

// Open loads the CA from cfg.Dir, creating a new root and intermediate when
// the directory holds none. created reports whether it did.
func Open(cfg Config) (ca *CA, created bool, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, false, err
	}
	tmpl, err := template.New("device").Funcs(x509util.GetFuncMap()).Parse(cfg.DeviceTemplate)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	present := 0
	for _, f := range []string{RootCertFile, RootKeyFile, IntermediateCertFile, IntermediateKeyFile} {
		if _, err := os.Stat(filepath.Join(cfg.Dir, f)); err == nil {
			present++
		}
	}
	switch present {
	case 0:
		if err := create(cfg); err != nil {
			return nil, false, err
		}
		created = true
	case 4:
	default:
		return nil, false, fmt.Errorf("%w: %s has %d of the 4 CA files; restore them from backup or move the directory away", ErrIncompleteCA, cfg.Dir, present)
	}
	ca, err = load(cfg, tmpl)
	if err != nil {
		return nil, false, err
	}
	// Prove the template renders before the first device needs it.
	probe, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := ca.render(&x509.CertificateRequest{PublicKey: probe.Public(), PublicKeyAlgorithm: x509.ECDSA},
		profile.Device{ID: uuid.New(), Serial: "PROBE"}); err != nil {
		return nil, false, err
	}
	return ca, created, nil
}

func create(cfg Config) error {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("create CA directory: %w", err)
	}
	creator, err := softcas.New(context.Background(), apiv1.Options{IsCreator: true})
	if err != nil {
		return fmt.Errorf("create CA: %w", err)
	}
	root, err := creator.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name: cfg.Name + " Root CA",
		Type: apiv1.RootCA,
		Template: &x509.Certificate{
			Subject:               pkix.Name{CommonName: cfg.Name + " Root CA", Organization: []string{cfg.Name}},
			IsCA:                  true,
			BasicConstraintsValid: true,
			MaxPathLen:            1,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		},
		Lifetime: 20 * 365 * 24 * time.Hour,
		Backdate: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("create root CA: %w", err)
	}
	inter, err := creator.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name: cfg.Name + " Intermediate CA",
		Type: apiv1.IntermediateCA,
		Template: &x509.Certificate{
			Subject:               pkix.Name{CommonName: cfg.Name + " Intermediate CA", Organization: []string{cfg.Name}},
			IsCA:                  true,
			BasicConstraintsValid: true,
			MaxPathLenZero:        true,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		},
		Lifetime: 10 * 365 * 24 * time.Hour,
		Backdate: time.Minute,
		Parent:   root,
	})
	if err != nil {
		return fmt.Errorf("create intermediate CA: %w", err)
	}
	// Keys first, certificates last: a crash in between leaves an incomplete
	// directory that Open reports rather than a CA without keys.
	if err := writeKey(filepath.Join(cfg.Dir, RootKeyFile), root.PrivateKey, cfg.Passphrase); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(cfg.Dir, IntermediateKeyFile), inter.PrivateKey, cfg.Passphrase); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(cfg.Dir, IntermediateCertFile), EncodeCerts(inter.Certificate), 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(cfg.Dir, RootCertFile), EncodeCerts(root.Certificate), 0o644)
}

func writeKey(path string, key crypto.PrivateKey, pass []byte) error {
	block, err := pemutil.Serialize(key, pemutil.WithPassword(pass), pemutil.WithPKCS8(true))
	if err != nil {
		return fmt.Errorf("encrypt CA key: %w", err)
	}
	return atomicfile.Write(path, pem.EncodeToMemory(block), 0o600)
}

func load(cfg Config, tmpl *template.Template) (*CA, error) {
	root, err := pemutil.ReadCertificate(filepath.Join(cfg.Dir, RootCertFile))
	if err != nil {
		return nil, fmt.Errorf("read root certificate: %w", err)
	}
	inter, err := pemutil.ReadCertificate(filepath.Join(cfg.Dir, IntermediateCertFile))
	if err != nil {
		return nil, fmt.Errorf("read intermediate certificate: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(cfg.Dir, IntermediateKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read intermediate key: %w", err)
	}
	key, err := pemutil.ParseKey(raw, pemutil.WithPassword(cfg.Passphrase))
	if err != nil {
		return nil, fmt.Errorf("%w (%s): %w", ErrBadPassphrase, IntermediateKeyFile, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("intermediate key: %T is not a signer", key)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("intermediate is not signed by root: %w", err)
	}
	if !publicKeysEqual(inter.PublicKey, signer.Public()) {
		return nil, errors.New("intermediate key does not match intermediate certificate")
	}
	cas, err := softcas.New(context.Background(), apiv1.Options{
		CertificateChain: []*x509.Certificate{inter},
		Signer:           signer,
	})
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &CA{cfg: cfg, root: root, intermediate: inter, cas: cas, signer: signer, tmpl: tmpl, roots: roots}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// Root returns the root certificate devices trust.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Intermediate returns the issuing certificate.
func (ca *CA) Intermediate() *x509.Certificate { return ca.intermediate }

// Roots returns a pool holding the root, for verifying peers.
func (ca *CA) Roots() *x509.CertPool { return ca.roots }

// RootPEM returns the root certificate in PEM.
func (ca *CA) RootPEM() []byte { return EncodeCerts(ca.root) }

func (ca *CA) render(csr *x509.CertificateRequest, id profile.Device) (*x509.Certificate, error) {
	var c x509util.Certificate
	if ca.cfg.DeviceTemplate == DefaultDeviceTemplate {
		c = defaultDevice(id)
	} else {
		var err error
		if c, err = ca.renderTemplate(csr, id); err != nil {
			return nil, err
		}
	}
	return finish(c, csr, id), nil
}

// finish makes a rendered certificate the one to sign: the CSR's key, and
// the identity the server chose, whatever the template or CSR say.
func finish(c x509util.Certificate, csr *x509.CertificateRequest, id profile.Device) *x509.Certificate {
	c.PublicKey, c.PublicKeyAlgorithm = csr.PublicKey, csr.PublicKeyAlgorithm
	t := c.GetCertificate()
	t.Subject.CommonName = id.ID.String()
	t.URIs = append([]*url.URL{id.URI()}, withoutURI(t.URIs, id.URI().String())...)
	t.NotBefore, t.NotAfter = time.Time{}, time.Time{}
	return t
}

// defaultDevice is what DefaultDeviceTemplate renders to, built directly:
// executing the template and decoding its JSON took a third of a
// certificate's issuance (issue 17; TestDefaultTemplateFastPath keeps the
// two the same).
func defaultDevice(id profile.Device) x509util.Certificate {
	return x509util.Certificate{
		Subject:     x509util.Subject{CommonName: id.ID.String(), SerialNumber: id.Serial},
		URIs:        x509util.MultiURL{id.URI()},
		KeyUsage:    x509util.KeyUsage(x509.KeyUsageDigitalSignature),
		ExtKeyUsage: x509util.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// renderTemplate executes the configured device template.
func (ca *CA) renderTemplate(csr *x509.CertificateRequest, id profile.Device) (x509util.Certificate, error) {
	data := x509util.NewTemplateData()
	data.Set("DeviceID", id.ID.String())
	data.Set("DeviceURI", id.URI().String())
	data.Set("Serial", id.Serial)
	data.Set("Model", id.Model)
	data.Set("Site", id.Site)
	data.SetCertificateRequest(csr)
	var buf bytes.Buffer
	if err := ca.tmpl.Execute(&buf, data); err != nil {
		return x509util.Certificate{}, fmt.Errorf("%w: render: %w", ErrTemplate, err)
	}
	var c x509util.Certificate
	if err := json.Unmarshal(buf.Bytes(), &c); err != nil {
		return x509util.Certificate{}, fmt.Errorf("%w: rendered template is not a certificate: %w", ErrTemplate, err)
	}
	return c, nil
}

func withoutURI(us []*url.URL, s string) []*url.URL {
	out := us[:0:0]
	for _, u := range us {
		if u.String() != s {
			out = append(out, u)
		}
	}
	return out
}

// IssueDevice signs a device certificate for the CSR's public key with the
// identity the server chose. The CSR signature must already be verified.
// It returns the leaf; the chain to present is leaf + Intermediate().
func (ca *CA) IssueDevice(csr *x509.CertificateRequest, id profile.Device) (*x509.Certificate, error) {
	tpl, err := ca.render(csr, id)
	if err != nil {
		return nil, err
	}
	res, err := ca.cas.CreateCertificate(&apiv1.CreateCertificateRequest{
		Template: tpl,
		CSR:      csr,
		Lifetime: ca.cfg.DeviceLifetime,
		Backdate: ca.cfg.Backdate,
	})
	if err != nil {
		return nil, fmt.Errorf("sign device certificate: %w", err)
	}
	return res.Certificate, nil
}

// IssueServer creates a key in memory and a server certificate for the given
// DNS names and IP addresses, valid for lifetime, chained to the intermediate.
func (ca *CA) IssueServer(names []string, ips []net.IP, lifetime time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	cn := "provisiond"
	if len(names) > 0 {
		cn = names[0]
	}
	res, err := ca.cas.CreateCertificate(&apiv1.CreateCertificateRequest{
		Template: &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn},
			DNSNames:    names,
			IPAddresses: ips,
			PublicKey:   key.Public(),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		},
		Lifetime: lifetime,
		Backdate: ca.cfg.Backdate,
	})
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("sign server certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{res.Certificate.Raw, ca.intermediate.Raw},
		PrivateKey:  key,
		Leaf:        res.Certificate,
	}, nil
}

// EncodeCerts PEM-encodes certificates in order.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}
