package boltkv_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices/kv"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/kvtest"
)

func TestConformance(t *testing.T) {
	kvtest.Run(t, func(t *testing.T) kv.DB {
		db, err := boltkv.Open(filepath.Join(t.TempDir(), "kv.db"), boltkv.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return db
	})
}

func TestLockedAndClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kv.db")
	db, err := boltkv.Open(path, boltkv.Options{Buckets: [][]byte{[]byte("a")}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := boltkv.Open(path, boltkv.Options{LockTimeout: 50 * time.Millisecond}); !errors.Is(err, boltkv.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	err = db.View(context.Background(), func(kv.Tx) error { return nil })
	if !errors.Is(err, kv.ErrClosed) {
		t.Fatalf("View after Close: %v, want ErrClosed", err)
	}
}
