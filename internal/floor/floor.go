// Package floor is the public-key work a server cannot avoid per
// enrollment of a new device, whichever front end it comes by (DTLS 1.2,
// TLS 1.3 for MQTT and EST): the ephemeral X25519 key pair and shared
// secret of the handshake, the server's handshake signature
// (ServerKeyExchange or CertificateVerify), the check of the CSR's
// proof of possession, the certificate's signature, and Go's check of that
// signature (x509.CreateCertificate verifies what it signed). Everything
// else an enrollment costs the server is overhead measured against this.
package floor

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Keys are the long-lived keys of the floor: the server's handshake key,
// the CA's signing key and a device key whose signature a CSR carries.
type Keys struct {
	server, ca, device *ecdsa.PrivateKey
	csrSig             []byte
	digest             [32]byte
}

// NewKeys makes the keys Once uses.
func NewKeys() (*Keys, error) {
	k := &Keys{digest: sha256.Sum256([]byte("a CSR's signed part"))}
	var err error
	for _, p := range []**ecdsa.PrivateKey{&k.server, &k.ca, &k.device} {
		if *p, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, err
		}
	}
	k.csrSig, err = ecdsa.SignASN1(rand.Reader, k.device, k.digest[:])
	return k, err
}

// Once does one enrollment's public-key work on the server's side.
func (k *Keys) Once() error {
	// The handshake: an ephemeral X25519 key pair, the shared secret with
	// the peer's share, and the server's signature over the key exchange.
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	peer, err := ecdh.X25519().NewPublicKey(eph.PublicKey().Bytes()) // a peer's share (its generation is the device's work)
	if err != nil {
		return err
	}
	if _, err := eph.ECDH(peer); err != nil {
		return err
	}
	if _, err := ecdsa.SignASN1(rand.Reader, k.server, k.digest[:]); err != nil {
		return err
	}
	// The CSR's proof of possession.
	if !ecdsa.VerifyASN1(&k.device.PublicKey, k.digest[:], k.csrSig) {
		return errors.New("floor: the CSR signature does not verify")
	}
	// The certificate: signed, and checked as x509.CreateCertificate does.
	sig, err := ecdsa.SignASN1(rand.Reader, k.ca, k.digest[:])
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(&k.ca.PublicKey, k.digest[:], sig) {
		return errors.New("floor: the certificate signature does not verify")
	}
	return nil
}

// MutualHandshake is the public-key work of one more handshake in which
// the device presents its new certificate (EST devices read their config
// over mutual TLS after enrolling): an X25519 pair and secret, the
// server's signature, the check of the client's CertificateVerify, and of
// the leaf's signature by the intermediate. The intermediate is the
// server's own and trusted directly (internal/peers), so its signature by
// the root is not checked again.
func (k *Keys) MutualHandshake() error {
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if _, err := eph.ECDH(eph.PublicKey()); err != nil {
		return err
	}
	sig, err := ecdsa.SignASN1(rand.Reader, k.server, k.digest[:])
	if err != nil {
		return err
	}
	for range 2 {
		if !ecdsa.VerifyASN1(&k.server.PublicKey, k.digest[:], sig) {
			return errors.New("floor: a signature does not verify")
		}
	}
	return nil
}

// Measure runs one enrollment's floor (Once, and MutualHandshake when
// mutual) for about d on one goroutine and returns its CPU time per
// enrollment (wall time on one goroutine: the work does not block).
func Measure(d time.Duration, mutual bool) (time.Duration, error) {
	k, err := NewKeys()
	if err != nil {
		return 0, err
	}
	n, start := 0, time.Now()
	for time.Since(start) < d || n < 10 {
		if err := k.Once(); err != nil {
			return 0, err
		}
		if mutual {
			if err := k.MutualHandshake(); err != nil {
				return 0, err
			}
		}
		n++
	}
	return time.Since(start) / time.Duration(n), nil
}

// ProcessRSS reads a local process's resident set size (VmRSS) from /proc.
func ProcessRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("process %d: VmRSS %q: %w", pid, v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("process %d: no VmRSS in /proc/%d/status", pid, pid)
}

// ProcessCPU is the user and system CPU time this process has spent so far:
// read around a run, the CPU time one side of it spent.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
