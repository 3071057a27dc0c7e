// Package dhcp serves the inventory's leases over DHCPv4: an enrolled
// device's ordinary DHCP client gets exactly the address provisiond leased
// it, with its site's mask, gateway, DNS, NTP and lease time; renewing and
// releasing move the inventory's lease. Packets are read and written by
// github.com/insomniacslk/dhcp; the rules are package enroll's.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/provisiond/provisiond/enroll"
)

// Config configures the DHCP server.
type Config struct {
	Service *enroll.Service
	// Interface binds the server to a network interface (a site's LAN,
	// served directly); "" serves relayed requests (giaddr) on Addr only.
	Interface string
	// Addr is the listen address; default ":67".
	Addr string
	// ServerIP is the server identifier (option 54) and, for requests that
	// were not relayed, the address whose site a device must be of;
	// default: Interface's first IPv4 address.
	ServerIP netip.Addr
	// Conn, when set, is the socket to serve (opened elsewhere: inside a
	// network namespace, say); Interface and Addr are then not used to open
	// one.
	Conn net.PacketConn
	Log  *slog.Logger
	// Observe hears each answered message (metrics): the message type
	// answered, or "ignored", "nak".
	Observe func(result string, d time.Duration)
	// MaxInFlight bounds messages handled at once; more are dropped (the
	// client retransmits). Default 64.
	MaxInFlight int
}

// Server is the DHCPv4 server.
type Server struct {
	cfg   Config
	conn  net.PacketConn
	slots chan struct{}
	wg    sync.WaitGroup
	stop  context.CancelFunc
	life  context.Context
}

// New opens the server's socket (unless Config.Conn is given).
func New(cfg Config) (*Server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if !cfg.ServerIP.IsValid() && cfg.Interface != "" {
		ip, err := interfaceIPv4(cfg.Interface)
		if err != nil {
			return nil, err
		}
		cfg.ServerIP = ip
	}
	if !cfg.ServerIP.Is4() {
		return nil, errors.New("dhcp: a server address (IPv4) is needed: --dhcp-interface with an IPv4 address, or --dhcp-server-ip")
	}
	conn := cfg.Conn
	if conn == nil {
		addr := &net.UDPAddr{Port: dhcpv4.ServerPort}
		if cfg.Addr != "" {
			a, err := net.ResolveUDPAddr("udp4", cfg.Addr)
			if err != nil {
				return nil, fmt.Errorf("dhcp listen address %q: %w", cfg.Addr, err)
			}
			addr = a
		}
		c, err := server4.NewIPv4UDPConn(cfg.Interface, addr)
		if err != nil {
			return nil, fmt.Errorf("dhcp listen %s on %q: %w", addr, cfg.Interface, err)
		}
		conn = c
	}
	life, stop := context.WithCancel(context.Background())
	return &Server{cfg: cfg, conn: conn, slots: make(chan struct{}, cfg.MaxInFlight), life: life, stop: stop}, nil
}

func interfaceIPv4(name string) (netip.Addr, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("dhcp interface %q: %w", name, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("dhcp interface %q: %w", name, err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("dhcp interface %q has no IPv4 address", name)
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.conn.LocalAddr() }

// Serve reads messages until Close.
func (s *Server) Serve() error {
	for {
		buf := make([]byte, 1500)
		n, peer, err := s.conn.ReadFrom(buf)
		if err != nil {
			if s.life.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case s.slots <- struct{}{}:
		default:
			s.cfg.Log.Debug("dhcp: too many messages at once; one dropped", "peer", peer)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer func() { <-s.slots; s.wg.Done() }()
			s.handle(buf[:n], peer)
		}()
	}
}

// Close stops the server and waits for the messages in hand.
func (s *Server) Close() error {
	s.stop()
	err := s.conn.Close()
	s.wg.Wait()
	return err
}

// handle answers one message. Unknown and revoked clients and requests
// from another site's network get no answer (another server may serve
// them); a request for an address that is not the device's gets DHCPNAK.
func (s *Server) handle(raw []byte, peer net.Addr) {
	start := time.Now()
	reply, to, result := s.respond(raw, peer)
	s.observe(result, start)
	if reply == nil {
		return
	}
	if _, err := s.conn.WriteTo(reply.ToBytes(), to); err != nil {
		s.cfg.Log.Info("dhcp: answer not sent", "to", to, "err", err)
	}
}

// respond decodes a message and decides its answer and where it goes (nil:
// none), with the result for the metrics.
func (s *Server) respond(raw []byte, peer net.Addr) (*dhcpv4.DHCPv4, net.Addr, string) {
	m, err := dhcpv4.FromBytes(raw)
	if err != nil || m.OpCode != dhcpv4.OpcodeBootRequest || m.HWType != iana.HWTypeEthernet || len(m.ClientHWAddr) != 6 {
		return nil, nil, "malformed"
	}
	reply, result := s.answer(m, peer)
	if reply == nil {
		return nil, nil, result
	}
	return reply, destination(m, reply), result
}

func (s *Server) answer(m *dhcpv4.DHCPv4, peer net.Addr) (*dhcpv4.DHCPv4, string) {
	ctx, cancel := context.WithTimeout(s.life, 5*time.Second)
	defer cancel()
	c := enroll.DHCPClient{MAC: m.ClientHWAddr.String(), ClientID: m.Options.Get(dhcpv4.OptionClientIdentifier), Network: s.cfg.ServerIP}
	if ua, ok := peer.(*net.UDPAddr); ok {
		if ap, ok := netip.AddrFromSlice(ua.IP.To4()); ok {
			c.Source = netip.AddrPortFrom(ap, uint16(ua.Port))
		}
	}
	if gi, ok := netip.AddrFromSlice(m.GatewayIPAddr.To4()); ok && !gi.IsUnspecified() {
		c.Network = gi // relayed: the relay's address names the client's network
	}
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		l, err := s.cfg.Service.DHCPLease(ctx, c, false, netip.Addr{})
		if err != nil {
			s.refused(m, err)
			return nil, "ignored"
		}
		return s.reply(m, dhcpv4.MessageTypeOffer, l), "offer"
	case dhcpv4.MessageTypeRequest:
		if sid := m.ServerIdentifier(); sid != nil && !sid.IsUnspecified() && !sid.Equal(net.IP(s.cfg.ServerIP.AsSlice())) {
			return nil, "ignored" // the client took another server's offer
		}
		requested := m.RequestedIPAddress()
		if requested == nil || requested.IsUnspecified() {
			requested = m.ClientIPAddr
		}
		ra, _ := netip.AddrFromSlice(requested.To4())
		l, err := s.cfg.Service.DHCPLease(ctx, c, true, ra)
		switch {
		case errors.Is(err, enroll.ErrInvalid), errors.Is(err, enroll.ErrRevoked):
			s.refused(m, err)
			return s.nak(m, err), "nak"
		case err != nil:
			s.refused(m, err)
			return nil, "ignored"
		}
		return s.reply(m, dhcpv4.MessageTypeAck, l), "ack"
	case dhcpv4.MessageTypeRelease:
		ci, _ := netip.AddrFromSlice(m.ClientIPAddr.To4())
		if err := s.cfg.Service.DHCPRelease(ctx, c, ci); err != nil {
			s.refused(m, err)
			return nil, "ignored"
		}
		return nil, "release"
	case dhcpv4.MessageTypeDecline:
		s.cfg.Log.Warn("dhcp: a client declined its address (in use on the network by something else?)", "mac", c.MAC,
			"address", m.RequestedIPAddress())
		return nil, "decline"
	}
	return nil, "ignored"
}

func (s *Server) refused(m *dhcpv4.DHCPv4, err error) {
	s.cfg.Log.Info("dhcp: no lease", "type", m.MessageType().String(), "mac", m.ClientHWAddr.String(), "reason", err)
}

// reply builds an OFFER or ACK carrying the lease and the site's network.
func (s *Server) reply(m *dhcpv4.DHCPv4, t dhcpv4.MessageType, l enroll.DHCPLease) *dhcpv4.DHCPv4 {
	left := time.Until(l.Expires).Truncate(time.Second)
	if left < time.Minute {
		left = time.Minute
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(t),
		dhcpv4.WithYourIP(net.IP(l.Addr.AsSlice())),
		dhcpv4.WithServerIP(net.IP(s.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(s.cfg.ServerIP.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(l.PrefixLen, 32))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(left)),
		dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(left / 2)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(left * 7 / 8)),
	}
	if l.Gateway.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(net.IP(l.Gateway.AsSlice()))))
	}
	if dns := ips(l.DNS); len(dns) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(dns...)))
	}
	if ntp := ips(l.NTP); len(ntp) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptNTPServers(ntp...)))
	}
	r, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		s.cfg.Log.Error("dhcp: reply", "err", err)
		return nil
	}
	return r
}

func (s *Server) nak(m *dhcpv4.DHCPv4, err error) *dhcpv4.DHCPv4 {
	msg := "not your address"
	if errors.Is(err, enroll.ErrRevoked) {
		msg = "device revoked"
	}
	r, e := dhcpv4.NewReplyFromRequest(m, dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(s.cfg.ServerIP.AsSlice()))),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)))
	if e != nil {
		return nil
	}
	return r
}

func ips(as []netip.Addr) []net.IP {
	var out []net.IP
	for _, a := range as {
		if a.Is4() {
			out = append(out, net.IP(a.AsSlice()))
		}
	}
	return out
}

// destination is where an answer goes (RFC 2131 §4.1): the relay, the
// client's address when it has one, else broadcast.
func destination(m, reply *dhcpv4.DHCPv4) net.Addr {
	switch {
	case m.GatewayIPAddr != nil && !m.GatewayIPAddr.IsUnspecified():
		return &net.UDPAddr{IP: m.GatewayIPAddr, Port: dhcpv4.ServerPort}
	case reply.MessageType() == dhcpv4.MessageTypeNak:
		return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
	case m.ClientIPAddr != nil && !m.ClientIPAddr.IsUnspecified():
		return &net.UDPAddr{IP: m.ClientIPAddr, Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

func (s *Server) observe(result string, start time.Time) {
	if s.cfg.Observe != nil {
		s.cfg.Observe(result, time.Since(start))
	}
}
