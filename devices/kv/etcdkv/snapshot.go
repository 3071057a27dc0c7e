package etcdkv

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/provisiond/provisiond/devices/kv"
)

var _ kv.Snapshotter = (*DB)(nil)

// Snapshot hands out etcd's own snapshot of the member it reaches: the
// whole etcd database in bbolt's format, its SHA-256 appended, restorable
// with `etcdutl snapshot restore`. It holds every key of that etcd, not
// only this inventory's prefix. The stream is spooled to a temporary file
// first, because emit needs the size up front.
func (db *DB) Snapshot(ctx context.Context, emit func(size int64, write func(io.Writer) error) error) error {
	resp, err := db.cli.SnapshotWithVersion(ctx)
	if err != nil {
		return db.wrap(ctx, "snapshot", err)
	}
	defer resp.Snapshot.Close()
	f, err := os.CreateTemp("", "provisiond-etcd-snapshot-")
	if err != nil {
		return fmt.Errorf("spool etcd snapshot: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	size, err := io.Copy(f, resp.Snapshot)
	if err != nil {
		return db.wrap(ctx, "snapshot", err)
	}
	return emit(size, func(w io.Writer) error {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		_, err := io.CopyN(w, f, size)
		return err
	})
}
