package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/internal/atomicfile"
	"github.com/provisiond/provisiond/pki"
)

// sharedDirs are the data directory's files that every replica of a
// cluster shares through the store: the CA's certificates and keys and the
// firmware signing key, each encrypted with the cluster's passphrase as it
// is on disk.
var sharedDirs = []struct {
	dir   string
	names []string
	what  string
}{
	{CADir, []string{pki.RootCertFile, pki.RootKeyFile, pki.IntermediateCertFile, pki.IntermediateKeyFile}, "CA"},
	{FirmwareDir, []string{firmware.KeyFile}, "firmware signing key"},
}

// errSharedDiffers is returned when a replica's data directory holds files
// of its own where the cluster has others.
var errSharedDiffers = errors.New("differs from the cluster's")

// shareFiles makes the data directory's files of one shared set the
// cluster's. If the store has them, they are written into the directory
// (a different file already there is an error, never overwritten). If not,
// create makes them when the directory has none (a new cluster), and they
// are stored; when another replica stored its own first, those win.
func (s *Server) shareFiles(ctx context.Context, dir string, names []string, what string, create func() error) error {
	key := func(n string) string { return filepath.ToSlash(filepath.Join(dir, n)) }
	var keys []string
	for _, n := range names {
		keys = append(keys, key(n))
	}
	createdNow := false
	for range 3 {
		stored, err := s.store.SharedFiles(ctx, keys)
		if err != nil {
			return fmt.Errorf("read the cluster's %s: %w", what, err)
		}
		if len(stored) == len(keys) {
			return s.writeShared(dir, names, stored, key, createdNow, what)
		}
		if len(stored) > 0 {
			return fmt.Errorf("the cluster's %s is incomplete in the store (%d of %d files)", what, len(stored), len(keys))
		}
		local := map[string][]byte{}
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(s.cfg.DataDir, dir, n))
			if err == nil {
				local[key(n)] = b
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if len(local) == 0 && !createdNow {
			if err := create(); err != nil {
				return err
			}
			createdNow = true
			continue
		}
		if len(local) != len(keys) {
			return fmt.Errorf("the data directory's %s is incomplete (%d of %d files in %s)", what, len(local), len(keys), dir)
		}
		ok, err := s.store.ShareFiles(ctx, local, devices.AuditEvent{Actor: "system", Action: "cluster.share", Target: what})
		if err != nil {
			return fmt.Errorf("store the %s for the cluster: %w", what, err)
		}
		if ok {
			s.log.Info("shared with the cluster", "what", what)
			return nil
		}
		// Another replica stored its own first: read it on the next round.
	}
	return fmt.Errorf("the cluster's %s: replicas kept racing to store it", what)
}

// writeShared writes the cluster's files into the data directory.
func (s *Server) writeShared(dir string, names []string, stored map[string][]byte, key func(string) string, overwrite bool, what string) error {
	for _, n := range names {
		path := filepath.Join(s.cfg.DataDir, dir, n)
		have, err := os.ReadFile(path)
		switch {
		case err == nil && bytes.Equal(have, stored[key(n)]):
			continue
		case err == nil && !overwrite:
			return fmt.Errorf("%s: %s %w; move it away to use the cluster's (see docs/cluster.md)", path, what, errSharedDiffers)
		case err != nil && !errors.Is(err, os.ErrNotExist):
			return err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := atomicfile.Write(path, stored[key(n)], 0o600); err != nil {
			return err
		}
	}
	return nil
}
