// Package etcdtest runs real etcd servers for tests: one member or a
// cluster of several, as processes on 127.0.0.1, each with its data under
// t.TempDir(), stopped when the test ends. The binary is the pinned etcd
// that `make test` builds into bin/ (PROVISIOND_ETCD names it; otherwise
// bin/etcd at the repository root). Without it a test fails under
// `make test` and CI, and skips with a notice elsewhere, like every other
// real peer (package testtools).
package etcdtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/provisiond/provisiond/internal/testtools"
)

// T is what the helpers need of a test: testing.TB has it, and so does
// the stand-in Main uses for a package's shared cluster.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	TempDir() string
	Cleanup(func())
}

// Binary returns the path of the etcd server binary.
func Binary(t T) string {
	t.Helper()
	return testtools.Built(t, "etcd", "PROVISIOND_ETCD")
}

// Options shape a cluster.
type Options struct {
	// Members is the cluster size; default 1.
	Members int
	// NoFsync skips etcd's fsyncs (--unsafe-no-fsync): for suites that
	// check semantics, not durability across a machine crash.
	NoFsync bool
	// Args are extra flags for every member.
	Args []string
}

// Cluster is a running etcd cluster.
type Cluster struct {
	t       T
	bin     string
	members []*Member
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	peerURL   string
	dir       string
	args      []string
	mu        sync.Mutex
	cmd       *exec.Cmd
	done      chan struct{}
	logPath   string
}

// Start starts a cluster and waits until it answers.
func Start(t T, opts Options) *Cluster {
	t.Helper()
	if opts.Members == 0 {
		opts.Members = 1
	}
	c := &Cluster{t: t, bin: Binary(t)}
	base := t.TempDir()
	var initial []string
	for i := range opts.Members {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: "http://" + testtools.FreeAddr(t, "tcp"),
			peerURL:   "http://" + testtools.FreeAddr(t, "tcp"),
			dir:       filepath.Join(base, fmt.Sprintf("m%d", i)),
		}
		m.logPath = m.dir + ".log"
		initial = append(initial, m.Name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.args = append([]string{
			"--name", m.Name,
			"--data-dir", m.dir,
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.peerURL,
			"--initial-advertise-peer-urls", m.peerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "provisiond-test",
			"--log-level", "warn",
			"--heartbeat-interval", "50",
			"--election-timeout", "500",
		}, opts.Args...)
		if opts.NoFsync {
			m.args = append(m.args, "--unsafe-no-fsync")
		}
		c.start(m)
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			m.stop(syscall.SIGKILL)
		}
	})
	c.WaitHealthy()
	return c
}

func (c *Cluster) start(m *Member) {
	c.t.Helper()
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	m.mu.Lock()
	m.cmd, m.done = cmd, done
	m.mu.Unlock()
}

func (m *Member) stop(sig syscall.Signal) {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Endpoints lists the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.ClientURL)
	}
	return out
}

// URL is the cluster as provisiond's --store flag takes it.
func (c *Cluster) URL() string {
	var hosts []string
	for _, m := range c.members {
		hosts = append(hosts, strings.TrimPrefix(m.ClientURL, "http://"))
	}
	return "etcd://" + strings.Join(hosts, ",")
}

// Members returns the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

// Client returns a client for the whole cluster, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Kill stops member m at once (SIGKILL), as a crash would.
func (c *Cluster) Kill(m *Member) { m.stop(syscall.SIGKILL) }

// Restart starts a stopped member again on its data directory.
func (c *Cluster) Restart(m *Member) {
	c.t.Helper()
	args := make([]string, 0, len(m.args))
	for i := 0; i < len(m.args); i++ {
		if m.args[i] == "--initial-cluster-state" {
			args = append(args, m.args[i], "existing")
			i++
			continue
		}
		args = append(args, m.args[i])
	}
	m.args = args
	c.start(m)
}

// Leader returns the member that leads the cluster now.
func (c *Cluster) Leader(t testing.TB) *Member {
	t.Helper()
	cli := c.Client(t)
	for _, m := range c.members {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, m.ClientURL)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return m
		}
	}
	t.Fatal("no etcd member says it is the leader")
	return nil
}

// WaitHealthy waits until every running member answers a linearizable read.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, m := range c.members {
		m.mu.Lock()
		running := m.cmd != nil
		m.mu.Unlock()
		if !running {
			continue
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			c.t.Fatal(err)
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = cli.Get(ctx, "health")
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				_ = cli.Close()
				log, _ := os.ReadFile(m.logPath)
				c.t.Fatalf("etcd %s did not become healthy: %v\n%s", m.Name, err, tail(log, 3000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cli.Close()
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// StoreEnv names the environment variable that runs a package's store-
// backed tests on etcd: PROVISIOND_TEST_STORE=etcd (make test runs the
// inventory and server suites once on each engine).
const StoreEnv = "PROVISIOND_TEST_STORE"

var shared *Cluster

// Shared is the package's cluster that Main started, or nil when the tests
// run on the embedded engine.
func Shared() *Cluster { return shared }

// Main runs a package's tests (call it from TestMain), first starting one
// etcd for the whole package when PROVISIOND_TEST_STORE=etcd; each test
// then takes a key prefix of its own on it.
func Main(m *testing.M) int {
	switch v := os.Getenv(StoreEnv); v {
	case "", "bolt":
		return m.Run()
	case "etcd":
	default:
		fmt.Fprintf(os.Stderr, "%s=%q: want bolt or etcd\n", StoreEnv, v)
		return 2
	}
	mt := &mainT{}
	defer mt.cleanup()
	ok := func() (ok bool) {
		defer func() {
			if r := recover(); r != nil {
				if _, failed := r.(mainFailure); !failed {
					panic(r)
				}
				ok = false
			}
		}()
		shared = Start(mt, Options{NoFsync: true})
		return true
	}()
	if !ok {
		return 1
	}
	return m.Run()
}

type mainFailure struct{}

// mainT stands in for a testing.T while TestMain starts the shared cluster.
type mainT struct {
	dirs     []string
	cleanups []func()
}

func (*mainT) Helper() {}
func (*mainT) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"etcdtest:"}, args...)...)
	panic(mainFailure{})
}
func (m *mainT) Fatalf(format string, args ...any) { m.Fatal(fmt.Sprintf(format, args...)) }
func (m *mainT) Skip(args ...any)                  { m.Fatal(args...) }
func (m *mainT) Cleanup(f func())                  { m.cleanups = append(m.cleanups, f) }
func (m *mainT) TempDir() string {
	d, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		m.Fatal(err)
	}
	m.dirs = append(m.dirs, d)
	return d
}
func (m *mainT) cleanup() {
	for i := len(m.cleanups) - 1; i >= 0; i-- {
		m.cleanups[i]()
	}
	for _, d := range m.dirs {
		_ = os.RemoveAll(d)
	}
}
