package enroll

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// FactoryStore is the part of the inventory that factory identities
// (IDevIDs under registered manufacturer CAs) need.
type FactoryStore interface {
	FactoryCAs(ctx context.Context) ([]devices.FactoryCA, error)
	RegisterFactoryDevice(ctx context.Context, caID, serial string, now time.Time, ev devices.AuditEvent) (devices.Device, error)
}

// ErrFactoryCert is returned when a factory certificate does not
// authenticate a device: it does not chain to a registered manufacturer CA,
// is a CA itself, is not valid (yet, or any more where the CA's policy does
// not accept expired ones), or names no usable serial. It wraps
// ErrUnauthorized, so transports answer it as an authentication failure.
var ErrFactoryCert = fmt.Errorf("%w: factory certificate refused", ErrUnauthorized)

// FactoryIdentity is who a verified factory certificate says a device is.
type FactoryIdentity struct {
	Serial  string
	CA      devices.FactoryCA
	Expired bool // accepted past its validity by the CA's policy
}

// FactoryCAID is the ID a manufacturer CA certificate is registered under:
// the hex SHA-256 of its DER.
func FactoryCAID(cert *x509.Certificate) string {
	h := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(h[:])
}

// CheckFactoryCA says whether cert can be registered as a manufacturer CA:
// a CA certificate allowed to sign certificates.
func CheckFactoryCA(cert *x509.Certificate) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("%w: not a CA certificate (basic constraints CA:TRUE required)", ErrInvalid)
	case cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("%w: the CA certificate's key usage does not allow signing certificates", ErrInvalid)
	}
	return nil
}

// factoryPool caches the parsed certificates of the registered CAs; the
// list itself is read from the store on every use, so a CA removed on any
// replica stops enrollments everywhere at once.
type factoryPool struct {
	mu     sync.Mutex
	parsed map[string]*x509.Certificate
}

func (p *factoryPool) cert(ca devices.FactoryCA) (*x509.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.parsed[ca.ID]; ok {
		return c, nil
	}
	c, err := x509.ParseCertificate(ca.CertDER)
	if err != nil {
		return nil, fmt.Errorf("factory CA %s: %w", ca.ID, err)
	}
	if p.parsed == nil || len(p.parsed) > 4096 {
		p.parsed = map[string]*x509.Certificate{}
	}
	p.parsed[ca.ID] = c
	return c, nil
}

// IdentifyFactory checks a factory certificate chain (leaf first, as the
// device presented it) against the registered manufacturer CAs and reads the
// device's serial from it.
func (s *Service) IdentifyFactory(ctx context.Context, chain []*x509.Certificate) (FactoryIdentity, error) {
	fs, ok := s.store.(FactoryStore)
	if !ok || len(chain) == 0 {
		return FactoryIdentity{}, fmt.Errorf("%w: no manufacturer CAs", ErrFactoryCert)
	}
	cas, err := fs.FactoryCAs(ctx)
	if err != nil {
		return FactoryIdentity{}, fmt.Errorf("factory CAs: %w", err)
	}
	return identifyFactory(&s.factory, cas, chain, s.clock.Now())
}

func identifyFactory(p *factoryPool, cas []devices.FactoryCA, chain []*x509.Certificate, now time.Time) (FactoryIdentity, error) {
	leaf := chain[0]
	if leaf.BasicConstraintsValid && leaf.IsCA {
		return FactoryIdentity{}, fmt.Errorf("%w: the certificate is a CA's, not a device's", ErrFactoryCert)
	}
	roots := x509.NewCertPool()
	byRaw := map[string]devices.FactoryCA{}
	for _, ca := range cas {
		c, err := p.cert(ca)
		if err != nil {
			return FactoryIdentity{}, err
		}
		roots.AddCert(c)
		byRaw[string(c.Raw)] = ca
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	chains, err := leaf.Verify(opts)
	expired := false
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) && invalid.Reason == x509.Expired && !now.Before(leaf.NotBefore) {
		// Past its validity: verify it as of the last second of the
		// chain's validity, then accept it only where the CA's policy says.
		at := leaf.NotAfter
		for _, c := range chain[1:] {
			if c.NotAfter.Before(at) {
				at = c.NotAfter
			}
		}
		opts.CurrentTime = at.Add(-time.Second)
		chains, err = leaf.Verify(opts)
		expired = true
	}
	if err != nil {
		return FactoryIdentity{}, fmt.Errorf("%w: %w", ErrFactoryCert, verifyReason(err))
	}
	// The nearest registered CA speaks for the device: an intermediate
	// registered for one model and batch wins over its root.
	var ca devices.FactoryCA
	best := -1
	for _, c := range chains {
		for i := 1; i < len(c); i++ {
			if r, ok := byRaw[string(c[i].Raw)]; ok && (best < 0 || i < best) {
				ca, best = r, i
				break
			}
		}
	}
	if best < 0 {
		return FactoryIdentity{}, fmt.Errorf("%w: no registered manufacturer CA in its chain", ErrFactoryCert)
	}
	if expired && !ca.AllowExpired {
		return FactoryIdentity{}, fmt.Errorf("%w: expired on %s and manufacturer CA %s does not accept expired certificates",
			ErrFactoryCert, leaf.NotAfter.UTC().Format(time.RFC3339), ca.ID[:16])
	}
	serial := SerialFromSubject(leaf.Subject, ca.Fields())
	if !devices.ValidSerial(serial) {
		return FactoryIdentity{}, fmt.Errorf("%w: no valid serial in subject fields %v", ErrFactoryCert, ca.Fields())
	}
	return FactoryIdentity{Serial: serial, CA: ca, Expired: expired}, nil
}

// verifyReason says in a line why a chain did not verify.
func verifyReason(err error) error {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return errors.New("it does not chain to a registered manufacturer CA")
	}
	return err
}

var oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}

// SerialFromSubject returns the first of fields that the subject carries
// ("" when none).
func SerialFromSubject(n pkix.Name, fields []string) string {
	for _, f := range fields {
		var v string
		switch f {
		case devices.FieldSerialNumber:
			v = n.SerialNumber
		case devices.FieldCN:
			v = n.CommonName
		case devices.FieldOU:
			if len(n.OrganizationalUnit) > 0 {
				v = n.OrganizationalUnit[0]
			}
		case devices.FieldUID:
			for _, a := range n.Names {
				if a.Type.Equal(oidUID) {
					v, _ = a.Value.(string)
					break
				}
			}
		}
		if v != "" {
			return v
		}
	}
	return ""
}

// authenticateFactory finds (or, where the CA registers on first contact,
// creates) the device a factory identity names, and checks that the CA
// speaks for it: the same model, and the CA's batch when it names one.
func (s *Service) authenticateFactory(ctx context.Context, req Request, fid FactoryIdentity, now time.Time, srcKey string, th throttled) (devices.Device, error) {
	refuse := func(reason string) (devices.Device, error) {
		s.failed(ctx, req.Serial, srcKey, now)
		s.log.Info("enrollment refused", "serial", req.Serial, "source", req.Source, "factory_ca", fid.CA.ID, "reason", reason)
		return devices.Device{}, fmt.Errorf("%w: %s", ErrFactoryCert, reason)
	}
	d, err := s.store.DeviceBySerial(ctx, req.Serial)
	switch {
	case errors.Is(err, devices.ErrNotFound) && fid.CA.AutoRegister:
		fs := s.store.(FactoryStore) // IdentifyFactory found the CAs through it
		d, err = fs.RegisterFactoryDevice(ctx, fid.CA.ID, req.Serial, now, devices.AuditEvent{
			Actor: "device:" + req.Serial, Action: "device.register", Target: req.Serial, Source: req.Source.String(),
			Detail: map[string]string{"transport": req.Transport}})
		if errors.Is(err, devices.ErrNotFound) {
			return refuse("the manufacturer CA was removed")
		}
		if err != nil {
			return d, fmt.Errorf("register %s: %w", req.Serial, err)
		}
		s.log.Info("device registered on first contact", "serial", d.Serial, "device_id", d.ID, "factory_ca", fid.CA.ID, "state", d.State)
	case errors.Is(err, devices.ErrNotFound):
		return refuse("serial is not registered and its manufacturer CA does not register devices on first contact")
	case err != nil:
		return d, fmt.Errorf("enroll %s: %w", req.Serial, err)
	}
	switch {
	case d.Model != "" && d.Model != fid.CA.Model:
		return refuse(fmt.Sprintf("the device is a %s; the manufacturer CA speaks for %s", d.Model, fid.CA.Model))
	case fid.CA.Batch != "" && d.BatchID != fid.CA.Batch:
		return refuse("the device is not in the manufacturer CA's batch " + fid.CA.Batch)
	}
	s.bySerial.succeed(ctx, req.Serial, th.serial)
	return d, nil
}

// FactoryRegistry is the part of the inventory that keeps manufacturer CAs.
type FactoryRegistry interface {
	AddFactoryCA(ctx context.Context, ca devices.FactoryCA, ev devices.AuditEvent) (devices.FactoryCA, error)
	FactoryCAs(ctx context.Context) ([]devices.FactoryCA, error)
	RemoveFactoryCA(ctx context.Context, id string, ev devices.AuditEvent) (devices.FactoryCA, error)
}

// FactoryCASpec is a manufacturer CA as an operator registers it.
type FactoryCASpec struct {
	Cert         []byte   // PEM or DER
	Model        string   // the model of every device under it
	Batch        string   // devices must be in it (auto-registered ones join it)
	Site         string   // auto-registered devices are claimed for it
	AutoRegister bool     // register an unknown serial on first contact
	AllowExpired bool     // accept factory certificates past their validity
	SerialFields []string // subject fields to read the serial from; empty: serialNumber, then CN
}

func (f *Fleet) factoryRegistry() (FactoryRegistry, error) {
	r, ok := f.reg.(FactoryRegistry)
	if !ok {
		return nil, errors.New("this inventory keeps no manufacturer CAs")
	}
	return r, nil
}

// AddFactoryCA registers a manufacturer CA (its root or an intermediate):
// devices whose factory certificates chain to it authenticate as the serial
// the certificate names.
func (f *Fleet) AddFactoryCA(ctx context.Context, a Actor, spec FactoryCASpec) (devices.FactoryCA, error) {
	r, err := f.factoryRegistry()
	if err != nil {
		return devices.FactoryCA{}, err
	}
	cert, err := ParseCertificate(spec.Cert)
	if err != nil {
		return devices.FactoryCA{}, err
	}
	if err := CheckFactoryCA(cert); err != nil {
		return devices.FactoryCA{}, err
	}
	switch {
	case !devices.ValidName(spec.Model):
		return devices.FactoryCA{}, fmt.Errorf("%w: model: must be 1-64 of [A-Za-z0-9._-]", ErrInvalid)
	case spec.Site != "" && !devices.ValidName(spec.Site):
		return devices.FactoryCA{}, fmt.Errorf("%w: site: invalid name", ErrInvalid)
	case spec.Site != "" && !spec.AutoRegister:
		return devices.FactoryCA{}, fmt.Errorf("%w: site: only for a CA that registers devices on first contact (auto_register)", ErrInvalid)
	case spec.Batch != "" && !devices.ValidName(spec.Batch):
		return devices.FactoryCA{}, fmt.Errorf("%w: batch: invalid ID", ErrInvalid)
	case !a.CanSite(""):
		return devices.FactoryCA{}, fmt.Errorf("%w: manufacturer CAs are global; this token is limited to sites", ErrForbidden)
	}
	for _, fl := range spec.SerialFields {
		if !devices.ValidSerialField(fl) {
			return devices.FactoryCA{}, fmt.Errorf("%w: serial_fields: %q is not one of serialNumber, CN, OU, UID", ErrInvalid, fl)
		}
	}
	now := time.Now().UTC()
	ca := devices.FactoryCA{ID: FactoryCAID(cert), Subject: cert.Subject.String(), CertDER: cert.Raw, Model: spec.Model,
		Batch: spec.Batch, Site: spec.Site, NotAfter: cert.NotAfter, AutoRegister: spec.AutoRegister,
		AllowExpired: spec.AllowExpired, SerialFields: spec.SerialFields, AddedBy: a.Name, AddedAt: now}
	ev := a.event("factory_ca.add", "factory-ca:"+ca.ID, map[string]string{"subject": ca.Subject, "model": ca.Model,
		"batch": ca.Batch, "site": ca.Site, "auto_register": fmt.Sprint(ca.AutoRegister), "allow_expired": fmt.Sprint(ca.AllowExpired)})
	ev.Time = now
	out, err := r.AddFactoryCA(ctx, ca, ev)
	if err == nil {
		f.log.Info("manufacturer CA registered", "id", ca.ID, "subject", ca.Subject, "model", ca.Model, "actor", a.Name)
	}
	return out, err
}

// FactoryCAs lists the registered manufacturer CAs.
func (f *Fleet) FactoryCAs(ctx context.Context) ([]devices.FactoryCA, error) {
	r, err := f.factoryRegistry()
	if err != nil {
		return nil, err
	}
	return r.FactoryCAs(ctx)
}

// RemoveFactoryCA unregisters a manufacturer CA (by its ID or an unambiguous
// prefix of at least 8 hex digits): no new enrollment under it from then on.
func (f *Fleet) RemoveFactoryCA(ctx context.Context, a Actor, ref string) (devices.FactoryCA, error) {
	r, err := f.factoryRegistry()
	if err != nil {
		return devices.FactoryCA{}, err
	}
	if !a.CanSite("") {
		return devices.FactoryCA{}, fmt.Errorf("%w: manufacturer CAs are global; this token is limited to sites", ErrForbidden)
	}
	id, err := f.factoryCAID(ctx, r, ref)
	if err != nil {
		return devices.FactoryCA{}, err
	}
	ca, err := r.RemoveFactoryCA(ctx, id, a.event("factory_ca.remove", "factory-ca:"+id, nil))
	if err == nil {
		f.log.Info("manufacturer CA removed", "id", id, "actor", a.Name)
	}
	return ca, err
}

func (f *Fleet) factoryCAID(ctx context.Context, r FactoryRegistry, ref string) (string, error) {
	ref = strings.ToLower(strings.TrimSpace(ref))
	if len(ref) < 8 {
		return "", fmt.Errorf("%w: factory CA: give its ID or at least 8 of its first hex digits", ErrInvalid)
	}
	cas, err := r.FactoryCAs(ctx)
	if err != nil {
		return "", err
	}
	var found []string
	for _, ca := range cas {
		if strings.HasPrefix(ca.ID, ref) {
			found = append(found, ca.ID)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("factory CA %s: %w", ref, devices.ErrNotFound)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%w: factory CA %s: %d CAs start so; give more digits", ErrInvalid, ref, len(found))
}

// ParseCertificate reads one certificate, PEM or DER.
func ParseCertificate(raw []byte) (*x509.Certificate, error) {
	if b, _ := pem.Decode(raw); b != nil {
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%w: certificate: PEM block is %q, want CERTIFICATE", ErrInvalid, b.Type)
		}
		raw = b.Bytes
	}
	c, err := x509.ParseCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate: %w", ErrInvalid, err)
	}
	return c, nil
}
