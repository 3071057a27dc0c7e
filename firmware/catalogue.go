package firmware

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/provisiond/provisiond/internal/atomicfile"

	"go.step.sm/crypto/pemutil"
)

// Files and directories of a catalogue.
const (
	KeyFile       = "signing.key"
	PublicKeyFile = "signing.pub"
	imagesDir     = "images"
	manifestsDir  = "manifests"
)

// MaxImageBytes bounds one image (256 MiB).
const MaxImageBytes = 256 << 20

// Catalogue is the firmware images and their signed manifests in a
// directory. It is safe for concurrent use.
type Catalogue struct {
	dir string
	key ed25519.PrivateKey
	pub ed25519.PublicKey
	pem []byte // pub as PEM, made once: every enrollment's answer carries it
	now func() time.Time
	mu  sync.Mutex // serialises Add

	// The manifests, read and verified once at Open and kept up to date by
	// Add: configs and downloads look them up on every request.
	cacheMu  sync.RWMutex
	manifest map[string]entry // "model/version"
}

type entry struct {
	signed Signed
	m      Manifest
}

// Open opens the catalogue in dir, creating the directory and a new
// signing key (encrypted with passphrase) on first start.
func Open(dir string, passphrase []byte) (*Catalogue, error) {
	for _, d := range []string{dir, filepath.Join(dir, imagesDir), filepath.Join(dir, manifestsDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create firmware directory: %w", err)
		}
	}
	keyPath := filepath.Join(dir, KeyFile)
	raw, err := os.ReadFile(keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := pemutil.Serialize(key, pemutil.WithPassword(passphrase), pemutil.WithPKCS8(true))
		if err != nil {
			return nil, fmt.Errorf("encrypt firmware signing key: %w", err)
		}
		if err := atomicfile.Write(keyPath, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
		raw = pem.EncodeToMemory(block)
	case err != nil:
		return nil, fmt.Errorf("read firmware signing key: %w", err)
	}
	k, err := pemutil.ParseKey(raw, pemutil.WithPassword(passphrase))
	if err != nil {
		return nil, fmt.Errorf("firmware signing key %s: %w", keyPath, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("firmware signing key %s is a %T, not Ed25519", keyPath, k)
	}
	c := &Catalogue{dir: dir, key: key, pub: key.Public().(ed25519.PublicKey), now: time.Now, manifest: map[string]entry{}}
	block, err := pemutil.Serialize(c.pub)
	if err != nil {
		return nil, err
	}
	c.pem = pem.EncodeToMemory(block)
	if err := atomicfile.Write(filepath.Join(dir, PublicKeyFile), c.PublicKeyPEM(), 0o600); err != nil {
		return nil, err
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	return c, nil
}

// Has returns nil when the catalogue holds version of model, else an error
// wrapping ErrNotFound.
func (c *Catalogue) Has(model, version string) error {
	_, _, err := c.Get(model, version)
	return err
}

// PublicKey is the key devices verify manifests with.
func (c *Catalogue) PublicKey() ed25519.PublicKey { return c.pub }

// PublicKeyPEM is the public key as a PEM "PUBLIC KEY" block (PKIX), a
// copy the caller may keep.
func (c *Catalogue) PublicKeyPEM() []byte { return bytes.Clone(c.pem) }

// Meta is what an operator says about an image besides its bytes.
type Meta struct {
	Model, Version             string
	MinBootloader, MinHardware string
	Notes                      string
}

// Add stores an image read from r and a signed manifest for it. Adding the
// same bytes under the same model and version again is a no-op that returns
// the existing manifest; other bytes under a version that exists are
// refused (ErrExists).
func (c *Catalogue) Add(r io.Reader, meta Meta) (Signed, Manifest, error) {
	m := Manifest{Model: meta.Model, Version: meta.Version, MinBootloader: meta.MinBootloader,
		MinHardware: meta.MinHardware, Notes: meta.Notes, Size: 1, SHA256: hex.EncodeToString(make([]byte, 32))}
	if err := m.Validate(); err != nil { // the names before any byte is written
		return Signed{}, Manifest{}, err
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, imagesDir), ".upload-*")
	if err != nil {
		return Signed{}, Manifest{}, err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, MaxImageBytes+1))
	if err != nil {
		return Signed{}, Manifest{}, fmt.Errorf("read image: %w", err)
	}
	if n == 0 || n > MaxImageBytes {
		return Signed{}, Manifest{}, fmt.Errorf("%w: image of %d bytes (1 to %d)", ErrInvalid, n, MaxImageBytes)
	}
	if err := tmp.Sync(); err != nil {
		return Signed{}, Manifest{}, err
	}
	m.Size, m.SHA256, m.Created = n, hex.EncodeToString(h.Sum(nil)), c.now().UTC().Truncate(time.Second)

	c.mu.Lock()
	defer c.mu.Unlock()
	if s, old, err := c.Get(m.Model, m.Version); err == nil {
		if old.SHA256 == m.SHA256 {
			return s, old, nil
		}
		return Signed{}, Manifest{}, fmt.Errorf("%w: %s %s is image %s", ErrExists, m.Model, m.Version, old.SHA256[:12])
	}
	if err := os.Rename(tmp.Name(), c.imagePath(m.SHA256)); err != nil {
		return Signed{}, Manifest{}, fmt.Errorf("store image: %w", err)
	}
	s, err := Sign(c.key, m)
	if err != nil {
		return Signed{}, Manifest{}, err
	}
	raw, _ := json.Marshal(s)
	if err := os.MkdirAll(filepath.Join(c.dir, manifestsDir, m.Model), 0o700); err != nil {
		return Signed{}, Manifest{}, err
	}
	if err := atomicfile.Write(c.manifestPath(m.Model, m.Version), raw, 0o600); err != nil {
		return Signed{}, Manifest{}, err
	}
	c.cacheMu.Lock()
	c.manifest[m.Model+"/"+m.Version] = entry{signed: s, m: m}
	c.cacheMu.Unlock()
	return s, m, nil
}

func (c *Catalogue) imagePath(digest string) string {
	return filepath.Join(c.dir, imagesDir, digest)
}

func (c *Catalogue) manifestPath(model, version string) string {
	return filepath.Join(c.dir, manifestsDir, model, version+".json")
}

// Get returns a model's signed manifest for a version.
func (c *Catalogue) Get(model, version string) (Signed, Manifest, error) {
	if !ValidModel(model) || !ValidVersion(version) {
		return Signed{}, Manifest{}, fmt.Errorf("%w: model %q version %q", ErrInvalid, model, version)
	}
	c.cacheMu.RLock()
	e, ok := c.manifest[model+"/"+version]
	c.cacheMu.RUnlock()
	if !ok {
		return Signed{}, Manifest{}, fmt.Errorf("%w: %s %s", ErrNotFound, model, version)
	}
	return e.signed, e.m, nil
}

// List returns every manifest, by model, then version (newest first).
func (c *Catalogue) List() ([]Manifest, error) {
	c.cacheMu.RLock()
	out := make([]Manifest, 0, len(c.manifest))
	for _, e := range c.manifest {
		out = append(out, e.m)
	}
	c.cacheMu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Model != out[j].Model {
			return out[i].Model < out[j].Model
		}
		return CompareVersions(out[i].Version, out[j].Version) > 0
	})
	return out, nil
}

// ByDigest returns the manifest of the image with this digest for a model.
func (c *Catalogue) ByDigest(model, digest string) (Manifest, bool) {
	c.cacheMu.RLock()
	defer c.cacheMu.RUnlock()
	for _, e := range c.manifest {
		if e.m.SHA256 == digest && e.m.Model == model {
			return e.m, true
		}
	}
	return Manifest{}, false
}

// load reads and verifies every manifest on disk. A manifest that does not
// verify with the signing key stops the start: it was not written by this
// catalogue.
func (c *Catalogue) load() error {
	models, err := os.ReadDir(filepath.Join(c.dir, manifestsDir))
	if err != nil {
		return err
	}
	for _, md := range models {
		if !md.IsDir() || !ValidModel(md.Name()) {
			continue
		}
		files, err := os.ReadDir(filepath.Join(c.dir, manifestsDir, md.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			v, ok := cutSuffix(f.Name(), ".json")
			if !ok || !ValidVersion(v) {
				continue
			}
			raw, err := os.ReadFile(c.manifestPath(md.Name(), v))
			if err != nil {
				return err
			}
			var s Signed
			if err := json.Unmarshal(raw, &s); err != nil {
				return fmt.Errorf("manifest %s %s: %w", md.Name(), v, err)
			}
			m, err := Verify(c.pub, s)
			if err != nil {
				return fmt.Errorf("manifest %s %s on disk: %w", md.Name(), v, err)
			}
			if m.Model != md.Name() || m.Version != v {
				return fmt.Errorf("manifest %s %s on disk names %s %s", md.Name(), v, m.Model, m.Version)
			}
			c.manifest[m.Model+"/"+m.Version] = entry{signed: s, m: m}
		}
	}
	return nil
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}
	return "", false
}

// Import adds a manifest signed elsewhere with this catalogue's key (another
// replica of a cluster, which shares the key), as Add would have stored
// it; its image comes separately (PutImage). A manifest that does not verify
// is refused; importing one that is here already is a no-op.
func (c *Catalogue) Import(s Signed) (Manifest, error) {
	m, err := Verify(c.pub, s)
	if err != nil {
		return Manifest{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, old, err := c.Get(m.Model, m.Version); err == nil {
		if old.SHA256 != m.SHA256 {
			return Manifest{}, fmt.Errorf("%w: %s %s is image %s", ErrExists, m.Model, m.Version, old.SHA256[:12])
		}
		return old, nil
	}
	raw, _ := json.Marshal(s)
	if err := os.MkdirAll(filepath.Join(c.dir, manifestsDir, m.Model), 0o700); err != nil {
		return Manifest{}, err
	}
	if err := atomicfile.Write(c.manifestPath(m.Model, m.Version), raw, 0o600); err != nil {
		return Manifest{}, err
	}
	c.cacheMu.Lock()
	c.manifest[m.Model+"/"+m.Version] = entry{signed: s, m: m}
	c.cacheMu.Unlock()
	return m, nil
}

// PutImage stores the image read from r under digest once its bytes hash to
// that digest (images are content-addressed, so any copy will do).
func (c *Catalogue) PutImage(r io.Reader, digest string) error {
	if !ValidDigest(digest) {
		return fmt.Errorf("%w: digest %q", ErrInvalid, digest)
	}
	tmp, err := os.CreateTemp(filepath.Join(c.dir, imagesDir), ".upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(r, MaxImageBytes+1))
	if err != nil {
		return fmt.Errorf("read image: %w", err)
	}
	if n > MaxImageBytes {
		return fmt.Errorf("%w: image over %d bytes", ErrInvalid, MaxImageBytes)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest {
		return fmt.Errorf("%w: the bytes hash to %s, not %s", ErrInvalid, got, digest)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), c.imagePath(digest))
}

// Image opens the image with this digest. The digest is checked before it
// becomes part of a path.
func (c *Catalogue) Image(digest string) (*os.File, error) {
	if !ValidDigest(digest) {
		return nil, fmt.Errorf("%w: digest %q", ErrInvalid, digest)
	}
	f, err := os.Open(c.imagePath(digest))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: image %s", ErrNotFound, digest)
	}
	return f, err
}
