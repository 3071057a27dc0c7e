// Package mfr is a manufacturer's CA as a factory runs one: it signs the
// factory certificates (IDevIDs, IEEE 802.1AR) that devices leave the line
// with. provisiond never holds such a CA's key; `provctl factory mint
// --idevid` uses a throwaway one, and the tests and the simulator stand in
// for a factory with it.
package mfr

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// CA is a manufacturer CA: a certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Files of a CA written by Save.
const (
	CertFile = "mfr-ca.pem"
	KeyFile  = "mfr-ca.key"
)

// NoExpiry is the notAfter IEEE 802.1AR gives a certificate that should
// never expire (GeneralizedTime 99991231235959Z).
var NoExpiry = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// New makes a self-signed manufacturer root named name.
func New(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{name}},
		// Back-dated, so that it can stand in for a factory whose devices
		// were made years ago (an IDevID past its validity).
		NotBefore:             now.AddDate(-10, 0, 0),
		NotAfter:              now.AddDate(20, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Intermediate makes a CA under c (a production line's, a batch's).
func (c *CA) Intermediate(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: c.Cert.Subject.Organization},
		NotBefore:             c.Cert.NotBefore,
		NotAfter:              c.Cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IDevID is a device's factory certificate.
type IDevID struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Options shape one IDevID; zero values give the usual one.
type Options struct {
	NotBefore, NotAfter time.Time // default: an hour ago, NoExpiry
	CNOnly              bool      // the serial in the CN only (no serialNumber attribute)
}

// Issue makes a key pair for the device with this serial and certifies it:
// the serial in the subject's serialNumber and CN, as IEEE 802.1AR has it.
func (c *CA) Issue(serialNumber string, o Options) (IDevID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return IDevID{}, err
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = NoExpiry
	}
	subj := pkix.Name{CommonName: serialNumber, SerialNumber: serialNumber, Organization: c.Cert.Subject.Organization}
	if o.CNOnly {
		subj.SerialNumber = ""
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               subj,
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return IDevID{}, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return IDevID{}, err
	}
	return IDevID{Cert: cert, Key: key}, nil
}

// CertPEM is the CA certificate in PEM.
func (c *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// Save writes the CA's certificate and (mode 0600) key into dir.
func (c *CA) Save(dir string) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, CertFile), c.CertPEM(), 0o644)
}

// Load reads a CA that Save wrote.
func Load(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, fmt.Errorf("manufacturer CA in %s: not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("manufacturer CA key: not a signing key")
	}
	return &CA{Cert: cert, Key: signer}, nil
}

// KeyPEM is a device key in PKCS#8 PEM.
func KeyPEM(k *ecdsa.PrivateKey) []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(k) // an ECDSA key always marshals
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
