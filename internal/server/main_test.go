package server_test

import (
	"os"
	"testing"

	"github.com/provisiond/provisiond/internal/etcdtest"
)

// With PROVISIOND_TEST_STORE=etcd every server these tests start keeps its
// inventory on one etcd for the package (make test runs the end-to-end
// tests a second time so).
func TestMain(m *testing.M) { os.Exit(etcdtest.Main(m)) }
