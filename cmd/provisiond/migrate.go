package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/devices/kv/boltkv"
	"github.com/provisiond/provisiond/devices/kv/etcdkv"
	"github.com/provisiond/provisiond/firmware"
	"github.com/provisiond/provisiond/internal/server"
	"github.com/provisiond/provisiond/pki"
)

// migrate moves a single-node installation into a cluster's etcd:
// provisiond migrate --from DATA_DIR --to etcd://... The inventory is
// copied key for key (devices, leases, tokens, certificates, revocations,
// jobs, rollouts, the audit chains with their hashes), the CA and the
// firmware signing key become the cluster's, so devices go on renewing
// with the certificates they hold.
func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("provisiond migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the single node's data directory (stopped)")
	to := fs.String("to", "", "the cluster's store: etcd://host:port[,host:port...][/prefix] (etcds:// with TLS)")
	ec := server.EtcdConfig{Password: os.Getenv("PROVISIOND_ETCD_PASSWORD")}
	etcdFlags(fs, &ec)
	workers := fs.Int("workers", 8, "transactions in flight at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || *to == "" || fs.NArg() > 0 {
		return errors.New("migrate: --from DATA_DIR and --to etcd://... are required")
	}
	// The CA must open with the passphrase the replicas will be given.
	pass := os.Getenv(server.PassphraseEnv)
	passFile := filepath.Join(*from, server.PassphraseFile)
	if pass == "" {
		b, err := os.ReadFile(passFile)
		if err != nil {
			return fmt.Errorf("migrate: give the CA passphrase as %s (the data directory has no %s)", server.PassphraseEnv, server.PassphraseFile)
		}
		pass = strings.TrimSpace(string(b))
		fmt.Fprintf(stderr, "using the generated CA passphrase in %s: every replica needs it as %s\n", passFile, server.PassphraseEnv)
	}
	caDir := filepath.Join(*from, server.CADir)
	ca, _, err := openExistingCA(caDir, pass)
	if err != nil {
		return err
	}
	if _, err := firmware.Open(filepath.Join(*from, server.FirmwareDir), []byte(pass)); err != nil {
		return fmt.Errorf("migrate: firmware catalogue: %w", err)
	}

	// Opened as the server opens it: an older layout is copied aside and
	// brought up to date first.
	src, err := server.OpenInventory(ctx, filepath.Join(*from, server.InventoryFile), boltkv.Options{})
	if errors.Is(err, boltkv.ErrLocked) {
		return fmt.Errorf("migrate: %s is in use by a running provisiond: stop it first", *from)
	}
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer src.Close()
	dst, err := etcdkv.Dial(ctx, *to, etcdkv.DialConfig{CAFile: ec.CAFile, CertFile: ec.CertFile, KeyFile: ec.KeyFile,
		Username: ec.Username, Password: ec.Password})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer dst.Close()

	start := time.Now()
	st, err := devices.Copy(ctx, dst, src, *workers)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	took := time.Since(start)
	inv, err := devices.New(ctx, dst)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// The CA and the firmware key become the cluster's.
	shared := map[string][]byte{}
	for dir, names := range map[string][]string{
		server.CADir:       {pki.RootCertFile, pki.RootKeyFile, pki.IntermediateCertFile, pki.IntermediateKeyFile},
		server.FirmwareDir: {firmware.KeyFile},
	} {
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(*from, dir, n))
			if err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
			shared[dir+"/"+n] = b
		}
	}
	// The firmware manifests too (signed with that key), so every replica
	// lists the images; their bytes come from the replica started on this
	// data directory (the others fetch them by digest).
	manifests, err := filepath.Glob(filepath.Join(*from, server.FirmwareDir, "manifests", "*", "*.json"))
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	for _, m := range manifests {
		b, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		rel, _ := filepath.Rel(filepath.Join(*from, server.FirmwareDir), m)
		shared[server.FirmwareDir+"/"+filepath.ToSlash(rel)] = b
	}
	ok, err := inv.ShareFiles(ctx, shared, devices.AuditEvent{Actor: "system", Action: "cluster.migrate", Target: "CA and firmware"})
	if err != nil || !ok {
		return fmt.Errorf("migrate: store the CA for the cluster: stored %v, %v", ok, err)
	}
	fp := sha256.Sum256(ca.Root().Raw)
	if err := inv.BindCA(ctx, fp[:]); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// The copy is checked as the cluster will read it.
	head, err := inv.VerifyAudit(ctx)
	if err != nil {
		return fmt.Errorf("migrate: the audit log does not verify in the cluster: %w", err)
	}
	problems, err := inv.Verify(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("migrate: the copied inventory has problems: %s", strings.Join(problems, "; "))
	}
	buckets := make([]string, 0, len(st.Per))
	for b := range st.Per {
		buckets = append(buckets, b)
	}
	sort.Strings(buckets)
	fmt.Fprintf(stdout, "moved %d keys (%d bytes) from %s into %s in %s\n", st.Keys, st.Bytes, *from, *to, took.Round(time.Millisecond))
	for _, b := range buckets {
		fmt.Fprintf(stdout, "  %-12s %d\n", b, st.Per[b])
	}
	fmt.Fprintf(stdout, "audit: %d events in %d chains verify\n", head.Events, head.Chains)
	fmt.Fprintf(stdout, "the CA (%s), the firmware signing key and %d firmware manifests are the cluster's\n", ca.Root().Subject.CommonName, len(manifests))
	fmt.Fprintf(stdout, "next: start the replicas with --store %s and %s, the first on a copy of %s (its firmware images: the others fetch them from it)\n",
		*to, server.PassphraseEnv, *from)
	return nil
}

// openExistingCA opens the CA in dir, refusing to create one.
func openExistingCA(dir, pass string) (*pki.CA, bool, error) {
	if _, err := os.Stat(filepath.Join(dir, pki.IntermediateKeyFile)); err != nil {
		return nil, false, fmt.Errorf("migrate: no CA in %s: %w", dir, err)
	}
	ca, created, err := pki.Open(pki.Config{Dir: dir, Passphrase: []byte(pass), DeviceLifetime: time.Hour})
	if err != nil {
		return nil, false, fmt.Errorf("migrate: the CA does not open with that passphrase: %w", err)
	}
	return ca, created, nil
}
