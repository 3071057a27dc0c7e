// Package radius sends RADIUS Disconnect-Requests (RFC 5176) to a site's
// access points when a device is revoked, so that its live Wi-Fi session
// ends at once rather than at its next authentication. Packets are
// layeh.com/radius's.
package radius

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"layeh.com/radius"
	"layeh.com/radius/rfc2865"

	"github.com/provisiond/provisiond/devices"
)

// Session names a device's Wi-Fi session to a NAS: its EAP identity (the
// device UUID) and, when it reported one, its MAC (Calling-Station-Id, as
// access points write it: AA-BB-CC-DD-EE-FF).
type Session struct {
	UserName string
	MAC      string
}

// SessionOf is the session a device of an enterprise site holds.
func SessionOf(d devices.Device) Session {
	s := Session{UserName: d.ID.String()}
	if mac, ok := devices.NormalizeMAC(d.MAC); ok {
		s.MAC = strings.ToUpper(strings.ReplaceAll(mac, ":", "-"))
	}
	return s
}

// Result is one NAS's answer to a Disconnect-Request.
type Result struct {
	NAS string
	ACK bool  // Disconnect-ACK; false: Disconnect-NAK or err
	Err error // no answer (after the retries), or a bad one
}

// Disconnect asks every NAS to end the session, each in parallel, waiting
// timeout for an answer per try and trying tries times. A NAK is not an
// error: the NAS had no such session.
func Disconnect(ctx context.Context, nas []devices.NAS, s Session, timeout time.Duration, tries int) []Result {
	out := make([]Result, len(nas))
	done := make(chan struct{}, len(nas))
	for i, n := range nas {
		go func() {
			defer func() { done <- struct{}{} }()
			out[i] = disconnectOne(ctx, n, s, timeout, tries)
		}()
	}
	for range nas {
		<-done
	}
	return out
}

func disconnectOne(ctx context.Context, n devices.NAS, s Session, timeout time.Duration, tries int) Result {
	r := Result{NAS: n.Address}
	p := radius.New(radius.CodeDisconnectRequest, []byte(n.Secret))
	if err := rfc2865.UserName_SetString(p, s.UserName); err != nil {
		r.Err = err
		return r
	}
	if s.MAC != "" {
		if err := rfc2865.CallingStationID_SetString(p, s.MAC); err != nil {
			r.Err = err
			return r
		}
	}
	client := radius.Client{Retry: 0, MaxPacketErrors: 1}
	for try := 0; try < max(tries, 1); try++ {
		c, cancel := context.WithTimeout(ctx, timeout)
		resp, err := client.Exchange(c, p, n.Address)
		cancel()
		if err == nil {
			switch resp.Code {
			case radius.CodeDisconnectACK:
				r.ACK, r.Err = true, nil
			case radius.CodeDisconnectNAK:
				r.Err = nil
			default:
				r.Err = fmt.Errorf("nas %s answered %v", n.Address, resp.Code)
			}
			return r
		}
		r.Err = err
		var ne net.Error
		if ctx.Err() != nil || !(errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)) {
			return r
		}
	}
	return r
}
