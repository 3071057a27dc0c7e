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
