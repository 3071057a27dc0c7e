package enroll

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"

	"github.com/provisiond/provisiond/devices"
)

// Notifier is told when a device's configuration changed (enrollment, later
// reconfiguration), so that a transport can push it to the device.
type Notifier interface {
	ConfigChanged(id uuid.UUID, cfg DeviceConfig)
}

// StateReport is what a device says about itself on its operational channel.
type StateReport struct {
	ConfigVersion   uint64
	FirmwareVersion string
	Health          string
}

// MaxHealthBytes bounds the free-text health field.
const MaxHealthBytes = 256

// ReportState records a device's report: the config version it applied, its
// firmware and health. A provisioned device that applied its current config
// becomes active (an audit event); a revoked device's reports are refused.
func (s *Service) ReportState(ctx context.Context, id uuid.UUID, rep StateReport, source string) error {
	if len(rep.Health) > MaxHealthBytes || len(rep.FirmwareVersion) > s.cfg.MaxFieldBytes {
		return fmt.Errorf("%w: health or firmware_version too long", ErrInvalid)
	}
	now := s.clock.Now().UTC()
	_, err := s.store.UpdateDevice(ctx, id, func(d *devices.Device) (*devices.AuditEvent, error) {
		switch d.State {
		case devices.StateRevoked:
			return nil, ErrRevoked
		case devices.StateProvisioned, devices.StateActive:
		default:
			return nil, fmt.Errorf("%w: device %s is %s", ErrUnknownDevice, d.Serial, d.State)
		}
		if rep.ConfigVersion > d.ConfigVersion {
			return nil, fmt.Errorf("%w: config_version %d was never issued (current %d)", ErrInvalid, rep.ConfigVersion, d.ConfigVersion)
		}
		d.AppliedConfigVersion, d.Health, d.LastSeen = rep.ConfigVersion, rep.Health, now
		if rep.FirmwareVersion != "" {
			d.FirmwareVersion = rep.FirmwareVersion
		}
		if d.State == devices.StateProvisioned && rep.ConfigVersion == d.ConfigVersion {
			d.State = devices.StateActive
			return &devices.AuditEvent{Time: now, Actor: "device:" + d.Serial, Action: "device.active", Target: d.Serial,
				Source: source, Detail: map[string]string{"config_version": strconv.FormatUint(rep.ConfigVersion, 10)}}, nil
		}
		return nil, nil
	})
	if errors.Is(err, devices.ErrNotFound) {
		return ErrUnknownDevice
	}
	return err
}

// Config renders a provisioned device's current configuration.
func (s *Service) Config(ctx context.Context, id uuid.UUID) (DeviceConfig, error) {
	d, err := s.store.Device(ctx, id)
	if errors.Is(err, devices.ErrNotFound) {
		return DeviceConfig{}, ErrUnknownDevice
	}
	if err != nil {
		return DeviceConfig{}, err
	}
	if d.State == devices.StateRevoked {
		return DeviceConfig{}, ErrRevoked
	}
	site, err := s.store.Site(ctx, d.Site)
	if err != nil {
		return DeviceConfig{}, err
	}
	return s.render(ctx, site, d)
}

func (s *Service) notify(id uuid.UUID, cfg DeviceConfig) {
	if s.notifier != nil {
		s.notifier.ConfigChanged(id, cfg)
	}
}

// PushConfig renders each device's current config and tells the notifiers
// (after a site or override change).
func (s *Service) PushConfig(ctx context.Context, ids []uuid.UUID) {
	for _, id := range ids {
		cfg, err := s.Config(ctx, id)
		if err != nil {
			s.log.Info("no config to push", "device_id", id, "err", err)
			continue
		}
		s.notify(id, cfg)
	}
}
