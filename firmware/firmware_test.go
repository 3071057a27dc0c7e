package firmware

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.step.sm/crypto/pemutil"

	"github.com/provisiond/provisiond/devices"
)

var pass = []byte("firmware-test-passphrase-0123")

func image(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func TestCatalogue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "firmware")
	c, err := Open(dir, pass)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("signing key: %v %v", st, err)
	}
	if raw, _ := os.ReadFile(filepath.Join(dir, KeyFile)); !bytes.Contains(raw, []byte("ENCRYPTED")) {
		t.Errorf("signing key is not encrypted:\n%s", raw)
	}
	img := image(300_000)
	s, m, err := c.Add(bytes.NewReader(img), Meta{Model: "TH1", Version: "1.2.0", MinBootloader: "2", Notes: "fixes"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != int64(len(img)) || m.Model != "TH1" || m.Version != "1.2.0" {
		t.Fatalf("manifest %+v", m)
	}
	if got, err := Verify(c.PublicKey(), s); err != nil || got != m {
		t.Fatalf("verify: %+v %v", got, err)
	}
	f, err := c.Image(m.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckImage(f); err != nil {
		t.Error(err)
	}
	f.Close()

	// The same bytes again: the same manifest. Other bytes: refused.
	if s2, _, err := c.Add(bytes.NewReader(img), Meta{Model: "TH1", Version: "1.2.0"}); err != nil || !bytes.Equal(s2.Signature, s.Signature) {
		t.Errorf("re-adding the same image: %v", err)
	}
	if _, _, err := c.Add(bytes.NewReader(image(10)), Meta{Model: "TH1", Version: "1.2.0"}); !errors.Is(err, ErrExists) {
		t.Errorf("other bytes under 1.2.0: %v", err)
	}
	for _, meta := range []Meta{
		{Model: "../etc", Version: "1.0"},
		{Model: "TH1", Version: "../../passwd"},
		{Model: "TH1", Version: "1.0-beta"},
		{Model: "", Version: "1.0"},
		{Model: "TH1", Version: "1.0", MinBootloader: "x"},
	} {
		if _, _, err := c.Add(bytes.NewReader(img), meta); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", meta, err)
		}
	}
	if _, _, err := c.Add(bytes.NewReader(nil), Meta{Model: "TH1", Version: "9"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty image: %v", err)
	}
	for _, d := range []string{"../../etc/passwd", "ABC", m.SHA256[:63]} {
		if _, err := c.Image(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("image %q: %v", d, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, imagesDir)); len(entries) != 1 {
		t.Errorf("images on disk: %d, want 1 (refused uploads leave nothing)", len(entries))
	}
	if _, _, err := c.Add(bytes.NewReader(image(1000)), Meta{Model: "TH1", Version: "1.10"}); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil || len(list) != 2 || list[0].Version != "1.10" {
		t.Errorf("list: %+v %v", list, err)
	}

	// Reopened: the same key; with another passphrase: refused.
	c2, err := Open(dir, pass)
	if err != nil || !c2.PublicKey().Equal(c.PublicKey()) {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := Open(dir, []byte("another-passphrase-000000")); err == nil {
		t.Error("opened with the wrong passphrase")
	}
	// A manifest changed on disk no longer verifies: the catalogue refuses
	// to start rather than hand it out.
	path := filepath.Join(dir, manifestsDir, "TH1", "1.2.0.json")
	raw, _ := os.ReadFile(path)
	var signed Signed
	json.Unmarshal(raw, &signed)
	signed.Manifest = bytes.Replace(signed.Manifest, []byte(`"1.2.0"`), []byte(`"1.2.1"`), 1)
	raw, _ = json.Marshal(signed)
	os.WriteFile(path, raw, 0o600)
	if _, err := Open(dir, pass); !errors.Is(err, ErrBadSignature) {
		t.Errorf("a tampered manifest on disk: %v", err)
	}
}

// What a device refuses before it installs.
func TestDeviceRefuses(t *testing.T) {
	c, err := Open(t.TempDir(), pass)
	if err != nil {
		t.Fatal(err)
	}
	img := image(5000)
	s, m, err := c.Add(bytes.NewReader(img), Meta{Model: "TH1", Version: "2.0.0", MinBootloader: "3.1"})
	if err != nil {
		t.Fatal(err)
	}
	tampered := s
	var raw map[string]any
	json.Unmarshal(s.Manifest, &raw)
	raw["sha256"] = "00" + m.SHA256[2:]
	tampered.Manifest, _ = json.Marshal(raw)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, _ := Sign(otherKey, m)
	flipped := bytes.Clone(img)
	flipped[100] ^= 1
	dev := Device{Model: "TH1", Running: "1.0", Floor: "1.5", Bootloader: "3.2"}

	cases := []struct {
		name     string
		manifest Signed
		image    []byte
		device   Device
		want     error
	}{
		{"genuine (control)", s, img, dev, nil},
		{"tampered manifest", tampered, img, dev, ErrBadSignature},
		{"manifest signed with another key", forged, img, dev, ErrBadSignature},
		{"tampered image", s, flipped, dev, ErrImageMismatch},
		{"truncated image", s, img[:4000], dev, ErrImageMismatch},
		{"image with bytes appended", s, append(bytes.Clone(img), 0), dev, ErrImageMismatch},
		{"wrong model", s, img, Device{Model: "TH2", Bootloader: "9"}, ErrNotAllowed},
		{"downgrade below the floor", s, img, Device{Model: "TH1", Floor: "2.1", Bootloader: "9"}, ErrNotAllowed},
		{"bootloader too old", s, img, Device{Model: "TH1", Bootloader: "3.0.9"}, ErrNotAllowed},
		{"bootloader unknown", s, img, Device{Model: "TH1"}, ErrNotAllowed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := install(c.PublicKey(), tc.manifest, bytes.NewReader(tc.image), tc.device)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// install is the device's order of checks.
func install(pub ed25519.PublicKey, s Signed, img io.Reader, d Device) error {
	m, err := Verify(pub, s)
	if err != nil {
		return err
	}
	if err := m.Allows(d); err != nil {
		return err
	}
	return m.CheckImage(img)
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"1.10", "1.9", 1}, {"1.2", "1.2.0", 0}, {"2", "10", -1}, {"0.0.1", "0.0.0.9", 1}} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("%s vs %s: %d", c.a, c.b, got)
		}
	}
}

// rolloutTable stands in for the inventory's rollouts.
type rolloutTable struct{ rs []devices.Rollout }

func (tb *rolloutTable) find(model, site string) *devices.Rollout {
	for i := range tb.rs {
		if tb.rs[i].Model == model && tb.rs[i].Site == site {
			return &tb.rs[i]
		}
	}
	return nil
}

func (tb *rolloutTable) put(r devices.Rollout, err error) error {
	if err != nil {
		return err
	}
	if old := tb.find(r.Model, r.Site); old != nil {
		*old = r
	} else {
		tb.rs = append(tb.rs, r)
	}
	return nil
}

func (tb *rolloutTable) set(model, site, version string, percent int) error {
	return tb.put(NextRollout(tb.find(model, site), model, site, version, percent, time.Now()))
}

func (tb *rolloutTable) state(model, site, state string) error {
	return tb.put(WithState(tb.find(model, site), model, site, state, time.Now()))
}

func TestRollouts(t *testing.T) {
	tb := &rolloutTable{}
	ids := make([]uuid.UUID, 2000)
	for i := range ids {
		ids[i] = uuid.New()
	}
	target := func(id uuid.UUID, site, pin string) (string, string) {
		return Target(devices.Device{ID: id, Model: "TH1", Site: site, FirmwarePin: pin}, tb.rs)
	}
	count := func(site, version string) (n int) {
		for _, id := range ids {
			if v, _ := target(id, site, ""); v == version {
				n++
			}
		}
		return n
	}
	if v, _ := target(ids[0], "hq", ""); v != "" {
		t.Fatalf("untargeted device: %q", v)
	}
	if err := tb.set("TH1", "", "1.0", 0); !errors.Is(err, ErrInvalid) {
		t.Errorf("0%%: %v", err)
	}
	if err := tb.set("TH1", "", "1.0", 100); err != nil {
		t.Fatal(err)
	}
	if n := count("hq", "1.0"); n != len(ids) {
		t.Fatalf("1.0 at 100%%: %d", n)
	}
	// 1.1 to 10% of hq: about 200 devices; the rest keep 1.0.
	if err := tb.set("TH1", "hq", "1.1", 10); err != nil {
		t.Fatal(err)
	}
	at10 := map[uuid.UUID]bool{}
	for _, id := range ids {
		if v, why := target(id, "hq", ""); v == "1.1" && why == "rollout" {
			at10[id] = true
		}
	}
	if len(at10) < 140 || len(at10) > 260 || count("hq", "1.0") != len(ids)-len(at10) {
		t.Fatalf("10%%: %d on 1.1, %d on 1.0", len(at10), count("hq", "1.0"))
	}
	if count("lab", "1.0") != len(ids) {
		t.Error("the hq rollout reached another site")
	}
	// 50%: a superset of the 10%.
	if err := tb.set("TH1", "hq", "1.1", 50); err != nil {
		t.Fatal(err)
	}
	for id := range at10 {
		if v, _ := target(id, "hq", ""); v != "1.1" {
			t.Fatal("raising the share dropped a device")
		}
	}
	if n := count("hq", "1.1"); n < 900 || n > 1100 {
		t.Errorf("50%%: %d", n)
	}
	// Paused: the share is frozen until resumed.
	if err := tb.state("TH1", "hq", devices.RolloutPaused); err != nil {
		t.Fatal(err)
	}
	if err := tb.set("TH1", "hq", "1.1", 80); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("raising a paused rollout: %v", err)
	}
	if err := tb.state("TH1", "hq", devices.RolloutActive); err != nil {
		t.Fatal(err)
	}
	// A pin wins over rollouts.
	if v, why := target(ids[0], "hq", "1.2"); v != "1.2" || why != "pin" {
		t.Errorf("pinned device: %s %s", v, why)
	}
	// Abort: everyone back to 1.0, and it stays aborted.
	if err := tb.state("TH1", "hq", devices.RolloutAborted); err != nil {
		t.Fatal(err)
	}
	if n := count("hq", "1.0"); n != len(ids) {
		t.Errorf("after the abort %d of %d on 1.0", n, len(ids))
	}
	if err := tb.state("TH1", "hq", devices.RolloutActive); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("resuming an aborted rollout: %v", err)
	}
	if err := tb.state("TH1", "lab", devices.RolloutPaused); !errors.Is(err, ErrNotFound) {
		t.Errorf("pausing no rollout: %v", err)
	}
}

// TestModelNamesAgree: a model the inventory accepts for a device can have
// firmware, and the other way round.
func TestModelNamesAgree(t *testing.T) {
	for _, m := range []string{"m", "sensor-v2", "gw_1", "acme.sensor.v2", "x1.0", strings.Repeat("m", 32), strings.Repeat("m", 33),
		strings.Repeat("m", 64), strings.Repeat("m", 65), "", ".hidden", "-x", "_x", "a/b", "..", "a b"} {
		t.Run(m, func(t *testing.T) {
			if got, want := ValidModel(m), devices.ValidName(m); got != want {
				t.Errorf("ValidModel(%q) = %v, devices.ValidName = %v", m, got, want)
			}
		})
	}
}

// TestPublicKeyPEM: the PEM every enrollment answer carries is the signing
// key's, the same as signing.pub, and a caller changing its copy changes
// nothing for the next.
func TestPublicKeyPEM(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, pass)
	if err != nil {
		t.Fatal(err)
	}
	got := c.PublicKeyPEM()
	k, err := pemutil.ParseKey(got)
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := k.(ed25519.PublicKey); !ok || !pub.Equal(c.PublicKey()) {
		t.Fatalf("PublicKeyPEM holds %T, not the catalogue's key", k)
	}
	file, err := os.ReadFile(filepath.Join(dir, PublicKeyFile))
	if err != nil || !bytes.Equal(file, got) {
		t.Errorf("%s differs from PublicKeyPEM (%v)", PublicKeyFile, err)
	}
	got[20] ^= 1
	if !bytes.Equal(c.PublicKeyPEM(), file) {
		t.Error("changing a returned PEM changed the catalogue's")
	}
}
