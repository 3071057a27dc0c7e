package devices_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
)

// Pruning removes the oldest events and leaves chains that still verify,
// from their anchors, with the same head hash; the pruned part, exported
// first, and the rest verify as one log; tampering with an anchor is caught.
func TestAuditPruneKeepsChainsVerifiable(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 300 {
		ev := devices.AuditEvent{Time: t0.Add(time.Duration(i) * time.Minute), Actor: "system", Action: "test",
			Target: fmt.Sprintf("dev-%02d", i%40)}
		if err := s.AppendAudit(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	before, err := s.VerifyAudit(ctx)
	if err != nil || before.Events != 300 {
		t.Fatalf("before: %+v %v", before, err)
	}
	// The export of what will be pruned.
	old, err := s.Audit(ctx, devices.AuditQuery{Ascending: true, Limit: 150})
	if err != nil || len(old) != 150 {
		t.Fatal(len(old), err)
	}
	n, err := s.PruneAudit(ctx, t0.Add(150*time.Minute))
	if err != nil || n != 150 {
		t.Fatalf("pruned %d (%v), want 150", n, err)
	}
	after, err := s.VerifyAudit(ctx)
	if err != nil || after.Events != 150 || after.Hash != before.Hash || after.Chains != before.Chains {
		t.Fatalf("after pruning: %+v %v; before %+v", after, err, before)
	}
	anchors, err := s.AuditAnchors(ctx)
	if err != nil || len(anchors) != 40 {
		t.Fatalf("%d anchors (%v), want one per chain touched (40)", len(anchors), err)
	}
	rest, err := s.Audit(ctx, devices.AuditQuery{Ascending: true, Limit: 1000})
	if err != nil || len(rest) != 150 {
		t.Fatal(len(rest), err)
	}
	// The rest alone verifies from the anchors, not without them.
	var v devices.AuditVerifier
	for _, a := range anchors {
		v.Anchor(a)
	}
	for _, ev := range rest {
		if err := v.Add(ev); err != nil {
			t.Fatalf("the rest from its anchors: %v", err)
		}
	}
	var bare devices.AuditVerifier
	if err := bare.Add(rest[0]); !errors.Is(err, devices.ErrAuditTampered) {
		t.Fatalf("the rest without anchors: %v, want ErrAuditTampered", err)
	}
	// The export taken before and the rest verify as one log.
	var whole devices.AuditVerifier
	for _, ev := range append(old, rest...) {
		if err := whole.Add(ev); err != nil {
			t.Fatalf("export then rest: %v", err)
		}
	}
	if whole.Head().Hash != before.Hash {
		t.Fatal("export and rest do not add up to the log's head")
	}
	if h, _ := s.History(ctx, "dev-00", 100); len(h) != 4 {
		t.Fatalf("dev-00 keeps %d events after pruning, want 4 (of 8)", len(h))
	}
	// Everything, then nothing left but anchors and heads: still verifies.
	if n, err := s.PruneAudit(ctx, t0.Add(24*time.Hour)); err != nil || n != 150 {
		t.Fatalf("second prune: %d %v", n, err)
	}
	if h, err := s.VerifyAudit(ctx); err != nil || h.Events != 0 || h.Hash != before.Hash {
		t.Fatalf("all pruned: %+v %v", h, err)
	}
	// New events go on from the heads.
	if err := s.AppendAudit(ctx, devices.AuditEvent{Actor: "system", Action: "test", Target: "dev-01"}); err != nil {
		t.Fatal(err)
	}
	if h, err := s.VerifyAudit(ctx); err != nil || h.Events != 1 {
		t.Fatalf("after a new event: %+v %v", h, err)
	}
}
