package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/internal/cluster"
	"github.com/provisiond/provisiond/pki"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// ReplicaIdentity is the DNS name in the certificate a replica presents to
// the others (to fetch a firmware image it lacks).
const ReplicaIdentity = "provisiond-replica"

// manifestPrefix is where a cluster's signed firmware manifests are kept
// among the shared files: firmware/manifests/MODEL/VERSION.json.
const manifestPrefix = "firmware/manifests/"

// catalogue is the firmware catalogue as the API and the downloads see it.
// Alone it is the data directory's. In a cluster an image added through any
// replica is on every one: its signed manifest goes into the store and is
// announced, and an image a replica lacks is fetched from another replica
// by its digest (images are content-addressed; the bytes are checked
// against the digest before they are kept).
type catalogue struct {
	*firmware.Catalogue
	s      *Server
	client *http.Client // to the other replicas, with this replica's certificate

	mu       sync.Mutex
	fetching map[string]chan struct{} // digest -> closed when its fetch ended
}

var _ httpapi.FirmwareCatalogue = (*catalogue)(nil)

func newCatalogue(s *Server, cat *firmware.Catalogue, ca *pki.CA) (*catalogue, error) {
	c := &catalogue{Catalogue: cat, s: s, fetching: map[string]chan struct{}{}}
	if !s.clustered() {
		return c, nil
	}
	cert, err := ca.NewServerCertificate([]string{ReplicaIdentity}, nil, 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	c.client = &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion: tls.VersionTLS12, RootCAs: ca.Roots(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert.Get() },
	}}}
	return c, nil
}

// Add stores an image and its manifest here and, in a cluster, shares the
// manifest and tells the other replicas.
func (c *catalogue) Add(r io.Reader, meta firmware.Meta) (firmware.Signed, firmware.Manifest, error) {
	signed, m, err := c.Catalogue.Add(r, meta)
	if err != nil || !c.s.clustered() {
		return signed, m, err
	}
	raw, err := json.Marshal(signed)
	if err != nil {
		return signed, m, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := manifestPrefix + m.Model + "/" + m.Version + ".json"
	if _, err := c.s.store.ShareFiles(ctx, map[string][]byte{name: raw},
		devices.AuditEvent{Actor: "system", Action: "firmware.share", Target: m.Model + " " + m.Version}); err != nil {
		return signed, m, fmt.Errorf("share the manifest with the cluster: %w", err)
	}
	c.s.announce(cluster.Event{Kind: cluster.Firmware, Ref: m.Model + "/" + m.Version})
	return signed, m, nil
}

// Image opens an image, fetching it from another replica first when this
// one lacks it.
func (c *catalogue) Image(digest string) (*os.File, error) {
	f, err := c.Catalogue.Image(digest)
	if !errors.Is(err, firmware.ErrNotFound) || !c.s.clustered() {
		return f, err
	}
	if err := c.fetch(context.Background(), digest); err != nil {
		return nil, err
	}
	return c.Catalogue.Image(digest)
}

// shareLocal puts the manifests of images this replica has into the store
// when the cluster lacks them (a single node's catalogue moved in), then
// takes the cluster's that it lacks: what a replica does at start.
func (c *catalogue) shareLocal(ctx context.Context) error {
	all, err := c.s.store.SharedPrefix(ctx, manifestPrefix)
	if err != nil {
		return err
	}
	list, err := c.Catalogue.List()
	if err != nil {
		return err
	}
	for _, m := range list {
		name := manifestPrefix + m.Model + "/" + m.Version + ".json"
		if _, ok := all[name]; ok {
			continue
		}
		signed, _, err := c.Catalogue.Get(m.Model, m.Version)
		if err != nil {
			return err
		}
		raw, err := json.Marshal(signed)
		if err != nil {
			return err
		}
		if _, err := c.s.store.ShareFiles(ctx, map[string][]byte{name: raw},
			devices.AuditEvent{Actor: "system", Action: "firmware.share", Target: m.Model + " " + m.Version}); err != nil {
			return err
		}
	}
	return c.importFrom(all)
}

// importShared takes the cluster's manifests this replica lacks (when
// another replica announces one, at a resync, on a rollout's miss).
func (c *catalogue) importShared(ctx context.Context) error {
	all, err := c.s.store.SharedPrefix(ctx, manifestPrefix)
	if err != nil {
		return err
	}
	return c.importFrom(all)
}

func (c *catalogue) importFrom(all map[string][]byte) error {
	for name, raw := range all {
		var signed firmware.Signed
		if err := json.Unmarshal(raw, &signed); err != nil {
			return fmt.Errorf("shared manifest %s: %w", name, err)
		}
		if _, err := c.Catalogue.Import(signed); err != nil {
			return fmt.Errorf("shared manifest %s: %w", name, err)
		}
	}
	return nil
}

// fetch gets an image from the first replica that has it; concurrent
// requests for one digest share one fetch.
func (c *catalogue) fetch(ctx context.Context, digest string) error {
	if !firmware.ValidDigest(digest) {
		return fmt.Errorf("%w: digest %q", firmware.ErrInvalid, digest)
	}
	c.mu.Lock()
	if wait, ok := c.fetching[digest]; ok {
		c.mu.Unlock()
		<-wait
		return nil // the caller opens the image, or finds it still missing
	}
	done := make(chan struct{})
	c.fetching[digest] = done
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.fetching, digest)
		c.mu.Unlock()
		close(done)
	}()
	if c.s.node == nil {
		return fmt.Errorf("%w: image %s (not joined to the cluster yet)", firmware.ErrNotFound, digest)
	}
	peers, err := c.s.node.Replicas(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range peers {
		if p.ID == c.s.node.ID() {
			continue
		}
		err := c.fetchFrom(ctx, p.API, digest)
		if err == nil {
			c.s.log.Info("fetched firmware image from a replica", "digest", digest, "from", p.API)
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p.API, err))
	}
	return fmt.Errorf("%w: image %s is on no other replica (%v)", firmware.ErrNotFound, digest, errors.Join(errs...))
}

func (c *catalogue) fetchFrom(ctx context.Context, api, digest string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/internal/v1/images/"+digest, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return c.Catalogue.PutImage(resp.Body, digest)
}

// imageRoute serves this replica's own images to the other replicas (never
// fetching in turn): a client certificate from the cluster's CA naming
// ReplicaIdentity is required.
func (c *catalogue) imageRoute() httpapi.Route {
	return httpapi.Route{Pattern: "GET /internal/v1/images/{digest}", Handle: func(w http.ResponseWriter, r *http.Request, _ enroll.Actor) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || !slices.Contains(r.TLS.VerifiedChains[0][0].DNSNames, ReplicaIdentity) {
			http.Error(w, "a replica's certificate is required", http.StatusForbidden)
			return
		}
		f, err := c.Catalogue.Image(r.PathValue("digest"))
		switch {
		case errors.Is(err, firmware.ErrNotFound):
			http.Error(w, "no such image here", http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, strings.TrimSpace(err.Error()), http.StatusBadRequest)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", time.Time{}, f)
	}}
}

// onFirmware takes another replica's new manifest and, in the background,
// its image.
func (c *catalogue) onFirmware(ctx context.Context, ref string) {
	if err := c.importShared(ctx); err != nil {
		c.s.log.Error("import the cluster's firmware manifests", "err", err)
		return
	}
	model, version, _ := strings.Cut(ref, "/")
	_, m, err := c.Catalogue.Get(model, version)
	if err != nil {
		c.s.log.Error("firmware announced but not in the store", "ref", ref, "err", err)
		return
	}
	c.s.bg.Go(func() {
		if f, err := c.Image(m.SHA256); err != nil {
			c.s.log.Warn("fetch firmware image", "ref", ref, "err", err)
		} else {
			f.Close()
		}
	})
}
