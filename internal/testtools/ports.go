package testtools

import "net"

// TB is what FreeAddr needs of a test (testing.TB has it).
type TB interface {
	Helper()
	Fatal(args ...any)
}

// FreeAddr returns a 127.0.0.1 address whose port ("tcp" or "udp") was
// free a moment ago, for a peer that must be told its port before it
// starts (an etcd member, a process restarted on the same ports, nginx).
func FreeAddr(t TB, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
