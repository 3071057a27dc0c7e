package boltkv

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/provisiond/provisiond/devices/kv"
)

// An append bucket's pages are packed: the same growing keys take about
// half the pages of an ordinary bucket.
func TestAppendBucketsArePacked(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "kv.db"), Options{AppendBuckets: [][]byte{[]byte("log")}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	value := make([]byte, 100)
	for chunk := range 20 {
		if err := d.Update(context.Background(), func(tx kv.Tx) error {
			for i := range 250 {
				k := binary.BigEndian.AppendUint64(nil, uint64(chunk*250+i))
				if err := tx.Put([]byte("log"), k, value); err != nil {
					return err
				}
				if err := tx.Put([]byte("plain"), k, value); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	pages := map[string]int{}
	d.db.View(func(tx *bolt.Tx) error {
		for _, name := range []string{"log", "plain"} {
			pages[name] = tx.Bucket([]byte(name)).Stats().LeafPageN
		}
		return nil
	})
	if pages["log"]*10 > pages["plain"]*6 {
		t.Fatalf("leaf pages: append bucket %d, ordinary %d", pages["log"], pages["plain"])
	}
	t.Logf("leaf pages: append bucket %d, ordinary %d", pages["log"], pages["plain"])
}
