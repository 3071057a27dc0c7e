// Package testtools finds the programs that tests run as real peers
// (libcoap's client, Mosquitto, OpenSSL, Chromium, zbarimg, nginx). `make test`
// installs them and sets PROVISIOND_REQUIRE_TOOLS, as CI does (CI=true):
// there a missing tool fails the test. A plain `go test` on a machine
// without them skips those tests and says which tool is missing. FreeAddr
// finds loopback ports for peers that must be told theirs before they start.
package testtools

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Required reports whether a missing tool fails the test rather than
// skipping it.
func Required() bool {
	return os.Getenv("CI") != "" || os.Getenv("PROVISIOND_REQUIRE_TOOLS") != ""
}

// Need returns the path of the first of names that is installed (on PATH,
// or in /usr/sbin for daemons such as mosquitto).
func Need(t testing.TB, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		if _, err := os.Stat("/usr/sbin/" + name); err == nil {
			return "/usr/sbin/" + name
		}
	}
	if Required() {
		t.Fatalf("%s is not installed (make test installs it)", names[0])
	}
	t.Skipf("%s is not installed; run make test", names[0])
	return ""
}

// Built returns the path of a program that `make test` builds from its Go
// module into bin/ (etcd, GlobalSign's estclient): the file the environment
// variable env names, else bin/name at the repository root. Missing, it
// fails the test where tools are required and skips it elsewhere.
func Built(t interface {
	Helper()
	Fatalf(format string, args ...any)
	Skip(args ...any)
}, name, env string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v (make %s builds it)", env, p, err, name)
		}
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("%v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, "bin", name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	if Required() {
		t.Fatalf("%s is not built: run make %s (make test builds it into bin/)", name, name)
	}
	t.Skip(name + " is not built into bin/; run make " + name)
	return ""
}
