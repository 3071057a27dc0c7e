package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// LockFile is held by the running provisiond of a data directory. With the
// inventory in bbolt its file lock alone would do; with etcd the data
// directory (this replica's CA copy, keys, firmware) still belongs to one
// process.
const LockFile = "provisiond.lock"

// errDataDirInUse is returned when another process holds the lock.
var errDataDirInUse = errors.New("in use by another provisiond")

// lockDataDir takes the data directory's lock, waiting up to wait for a
// process that is just stopping.
func lockDataDir(dir string, wait time.Duration) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("data directory %s is %w; stop it or use --data", dir, errDataDirInUse)
			}
			return nil, fmt.Errorf("lock data directory: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
