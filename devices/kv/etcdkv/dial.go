package etcdkv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrBadURL is returned by ParseURL for a store URL it cannot use.
var ErrBadURL = errors.New("bad etcd store URL")

// Target is a parsed store URL: etcd://host:port[,host:port...][/prefix/]
// (etcds:// for TLS).
type Target struct {
	Endpoints []string // client URLs: http://host:port or https://host:port
	Prefix    string   // key prefix, "/provisiond/" when the URL has no path
	TLS       bool
}

// ParseURL parses a store URL.
func ParseURL(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Target{}, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	var t Target
	scheme := "http://"
	switch u.Scheme {
	case "etcd":
	case "etcds":
		t.TLS, scheme = true, "https://"
	default:
		return Target{}, fmt.Errorf("%w %q: the scheme is etcd:// or etcds://", ErrBadURL, s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Target{}, fmt.Errorf("%w %q: only hosts and a key prefix (credentials go in --etcd-* settings)", ErrBadURL, s)
	}
	for _, h := range strings.Split(u.Host, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil || host == "" || port == "" {
			return Target{}, fmt.Errorf("%w %q: %q is not host:port", ErrBadURL, s, h)
		}
		t.Endpoints = append(t.Endpoints, scheme+h)
	}
	t.Prefix = "/provisiond/"
	if p := strings.Trim(u.Path, "/"); p != "" {
		t.Prefix = "/" + p + "/"
	}
	return t, nil
}

// DialConfig is how to reach etcd beside its URL.
type DialConfig struct {
	CAFile   string // PEM roots for etcd's server certificates (etcds://)
	CertFile string // client certificate (etcd --client-cert-auth)
	KeyFile  string
	Username string // etcd authentication, when enabled
	Password string
	Options  Options
}

// Dial connects to the cluster at url and returns the engine, which closes
// its client on Close.
func Dial(ctx context.Context, rawURL string, cfg DialConfig) (*DB, error) {
	t, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	cc := clientv3.Config{
		Endpoints:   t.Endpoints,
		DialTimeout: 5 * time.Second,
		Username:    cfg.Username,
		Password:    cfg.Password,
		Logger:      zap.NewNop(),
		Context:     context.WithoutCancel(ctx),
		// Keepalives notice a dead member (and a network cut) in seconds.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
	}
	if t.TLS || cfg.CAFile != "" || cfg.CertFile != "" {
		if !t.TLS {
			return nil, fmt.Errorf("%w %q: TLS settings given for a plain etcd:// URL (use etcds://)", ErrBadURL, rawURL)
		}
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("etcd CA: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("etcd CA %s: no PEM certificate in it", cfg.CAFile)
			}
		}
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, errors.New("etcd client certificate: give both the certificate and its key")
		}
		if cfg.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("etcd client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(t.Endpoints, ","), err)
	}
	// Fail at start, not at the first enrollment, when etcd is not there.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(sctx, t.Prefix+"health"); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(t.Endpoints, ","), err)
	}
	opts := cfg.Options
	opts.Prefix = t.Prefix
	db := New(cli, opts)
	db.owned = true
	return db, nil
}
