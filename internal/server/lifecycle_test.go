//lint:file-ignore SA1019 go-coap v3.8 takes pion's *dtls.Config, which pion has deprecated in favour of options

package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	piondtls "github.com/pion/dtls/v3"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/coap"
	"github.com/provisiond/provisiond/transport/httpapi"
)

// TestOlderInventoryCopiedThenMoved opens an inventory written before the
// audit log had chains: the file is copied first, then migrated, and both
// the copy (the old layout) and the migrated store verify.
func TestOlderInventoryCopiedThenMoved(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), server.InventoryFile)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
	err = db.Update(func(tx *bolt.Tx) error {
		audit, _ := tx.CreateBucket([]byte("audit"))
		meta, _ := tx.CreateBucket([]byte("meta"))
		prev := ""
		for i := uint64(1); i <= 3; i++ {
			ev := devices.AuditEvent{Seq: i, Time: time.Date(2026, 10, 1, 0, 0, int(i), 0, time.UTC), Actor: "system", Action: "old", PrevHash: prev}
			ev.Hash, _ = devices.HashAuditEvent(ev)
			prev = ev.Hash
			raw, _ := json.Marshal(ev)
			audit.Put(seq(i), raw)
		}
		return meta.Put([]byte("audit_head"), append(seq(3), prev...))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.OpenInventory(ctx, path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	head, err := st.VerifyAudit(ctx)
	st.Close()
	if err != nil || head.Events != 3 {
		t.Fatalf("migrated store: %+v, %v", head, err)
	}
	copied, err := bolt.Open(path+".before-audit-chains", 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("the copy taken before migrating: %v", err)
	}
	defer copied.Close()
	copied.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("audit")); b == nil || b.Stats().KeyN != 3 || tx.Bucket([]byte("meta")).Get([]byte("audit_head")) == nil {
			t.Error("the copy does not hold the old layout")
		}
		return nil
	})
	// Opening again finds nothing to migrate and copies nothing more.
	st, err = server.OpenInventory(ctx, path, boltkv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if m, _ := filepath.Glob(path + ".before-*"); len(m) != 1 {
		t.Errorf("copies after a second open: %v", m)
	}
}

// TestErrIsOneChannel: Server.Err is one channel, not a goroutine and a
// channel per call (main selects on it in a loop).
func TestErrIsOneChannel(t *testing.T) {
	env := servertest.Start(t)
	first := env.Server.Err()
	before := runtime.NumGoroutine()
	for range 1000 {
		if env.Server.Err() != first {
			t.Fatal("Err hands out a new channel per call")
		}
	}
	if grown := runtime.NumGoroutine() - before; grown > 50 {
		t.Fatalf("1000 calls of Err started %d goroutines", grown)
	}
}

// TestFrontEndsMountedFromOutside: a front end that is not part of the
// server (here, a test's) mounts a CoAP resource on the DTLS listener and an
// HTTPS route beside the API; the resource sees the device's verified
// identity, and the route is guarded by role like the API's own.
func TestFrontEndsMountedFromOutside(t *testing.T) {
	env := servertest.Start(t, func(c *server.Config) {
		c.CoAPResources = []coap.Resource{{Path: "/hello", Handler: mux.HandlerFunc(func(w mux.ResponseWriter, _ *mux.Message) {
			id, _, ok := coap.Peer(w)
			body := "hello, stranger"
			if ok {
				body = "hello, " + id.String()
			}
			_ = w.SetResponse(codes.Content, message.TextPlain, strings.NewReader(body))
		})}}
		c.Routes = []httpapi.Route{{Pattern: "GET /api/v1/hello", Role: devices.RoleOperator, Handle: func(w http.ResponseWriter, _ *http.Request, a enroll.Actor) {
			_ = json.NewEncoder(w).Encode(map[string]string{"hello": a.Name})
		}}}
	})
	if a := rawRequest(t, env, codes.GET, "/hello", noFormat, nil, nil); a.Code != codes.Content || string(a.Body) != "hello, stranger" {
		t.Errorf("mounted CoAP resource, no device certificate: %v %q", a.Code, a.Body)
	}
	env.Site("hq", "10.20.0.0/24")
	d, _ := simulator.NewDevice(env.Mint(1, "hq")[0])
	res, err := d.Enroll(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := d.TLSCertificate()
	roots := x509.NewCertPool()
	roots.AddCert(env.Server.CA().Root())
	withCert := &piondtls.Config{RootCAs: roots, ServerName: "127.0.0.1", Certificates: []tls.Certificate{*cert},
		ExtendedMasterSecret: piondtls.RequireExtendedMasterSecret}
	if a := rawRequest(t, env, codes.GET, "/hello", noFormat, nil, withCert); string(a.Body) != "hello, "+res.DeviceID {
		t.Errorf("mounted CoAP resource with the device certificate: %v %q", a.Code, a.Body)
	}
	var out map[string]string
	if err := env.Client.DoRaw(ctxT(t), http.MethodGet, "/api/v1/hello", "", nil, &out); err != nil || !strings.HasPrefix(out["hello"], "token:") {
		t.Fatalf("mounted route with the admin token: %v %v", out, err)
	}
	var viewer httpapi.TokenCreated
	if err := env.Client.Do(ctxT(t), http.MethodPost, "/api/v1/tokens", httpapi.TokenRequest{Name: "v", Role: devices.RoleViewer}, &viewer); err != nil {
		t.Fatal(err)
	}
	vc, err := httpapi.NewClient("https://"+env.Server.HTTPAddr().String(), viewer.Secret, env.Server.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	err = vc.DoRaw(ctxT(t), http.MethodGet, "/api/v1/hello", "", nil, &out)
	var apiErr *httpapi.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden {
		t.Errorf("mounted operator route with a viewer token: %v, want 403", err)
	}
}
