package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/enroll"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/wire"
)

func provctl(t *testing.T, data string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append([]string{"--data", data}, args...), &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestWalkthrough(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir

	if out, err := provctl(t, data, "site", "create", "hq", "--ssid", "Office", "--security", "wpa2-psk",
		"--passphrase", "correct horse battery", "--cidr", "10.20.0.0/24", "--dns", "10.20.0.1", "--lease", "12h"); err != nil {
		t.Fatalf("site create: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "site", "create", "bad", "--ssid", "x", "--security", "wep", "--passphrase", "12345678", "--cidr", "10.0.0.0/24"); err == nil || !strings.Contains(err.Error(), "security") {
		t.Errorf("invalid site accepted: %v %s", err, out)
	}
	out, err := provctl(t, data, "-o", "json", "site", "show", "hq")
	var site struct {
		Lease         string `json:"lease"`
		PassphraseSet bool   `json:"passphrase_set"`
		Passphrase    string `json:"passphrase"`
	}
	if err != nil || json.Unmarshal([]byte(out), &site) != nil || site.Lease != "12h0m0s" || !site.PassphraseSet || site.Passphrase != "" {
		t.Errorf("site show -o json: %v %+v\n%s", err, site, out)
	}

	dir := filepath.Join(t.TempDir(), "batch")
	if out, err := provctl(t, data, "factory", "mint", "--model", "TH1", "--count", "5", "--site", "hq", "--out", dir); err != nil {
		t.Fatalf("mint: %v\n%s", err, out)
	}
	bundles, err := simulator.LoadBundles(dir)
	if err != nil || len(bundles) != 5 {
		t.Fatalf("bundles: %d, %v", len(bundles), err)
	}
	for _, b := range bundles {
		st, _ := os.Stat(filepath.Join(dir, b.Serial+".json"))
		if st.Mode().Perm() != 0o600 || b.RootCA == "" || len(b.Endpoints) == 0 || len(b.ClaimToken) < 32 {
			t.Errorf("bundle %s: mode %v, %+v", b.Serial, st.Mode().Perm(), b)
		}
	}
	var man wire.Manifest
	raw, _ := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if json.Unmarshal(raw, &man) != nil || len(man.Devices) != 5 || strings.Contains(string(raw), bundles[0].ClaimToken) {
		t.Errorf("manifest: %s", raw)
	}
	if out, err := provctl(t, data, "factory", "mint", "--model", "TH1", "--count", "1", "--out", dir); err == nil {
		t.Errorf("mint into a non-empty directory: %s", out)
	}
	_, sum := simulator.Run(context.Background(), bundles, simulator.RunOptions{})
	if sum.Enrolled != 5 {
		t.Fatalf("devsim: %v", sum)
	}

	csv := filepath.Join(t.TempDir(), "line7.csv")
	os.WriteFile(csv, []byte("serial,model,claim_token\nL7-0001,TH2,TOKENTOKENTOKEN0001\nL7-0002,TH2,short\n../x,TH2,TOKENTOKENTOKEN0003\n"), 0o600)
	out, err = provctl(t, data, "factory", "import", csv)
	if err == nil || !strings.Contains(out, "1 created") || !strings.Contains(out, "row 2 (L7-0002): claim_token") || !strings.Contains(out, "row 3 (../x): serial") {
		t.Errorf("import with bad rows: %v\n%s", err, out)
	}
	os.WriteFile(csv, []byte("serial,model,claim_token\nL7-0001,TH2,TOKENTOKENTOKEN0001\n"), 0o600)
	if out, err := provctl(t, data, "factory", "import", csv); err != nil || !strings.Contains(out, "0 created, 1 already registered") {
		t.Errorf("re-import: %v\n%s", err, out)
	}

	out, err = provctl(t, data, "-o", "json", "devices", "list", "--site", "hq", "--state", "provisioned")
	var list struct {
		Devices []struct{ Serial, State string } `json:"devices"`
	}
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list.Devices) != 5 {
		t.Errorf("devices list: %v %d\n%s", err, len(list.Devices), out)
	}
	if out, err := provctl(t, data, "devices", "show", bundles[0].Serial); err != nil || !strings.Contains(out, "lease 10.20.0.") {
		t.Errorf("devices show: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "site", "delete", "hq"); err == nil || !strings.Contains(err.Error(), "in_use") {
		t.Errorf("delete a site in use: %v %s", err, out)
	}
	if out, err := provctl(t, data, "audit", "--limit", "1000"); err != nil || !strings.Contains(out, "device.enroll") || !strings.Contains(out, "batch.import") || !strings.Contains(out, "site.create") {
		t.Errorf("audit: %v\n%s", err, out)
	}
}

func TestConnectErrors(t *testing.T) {
	if _, err := provctl(t, t.TempDir(), "site", "list"); err == nil || !strings.Contains(err.Error(), "is provisiond running") {
		t.Errorf("no server: %v", err)
	}
}

func TestAuditExportAndVerify(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	env.Mint(3, "hq")
	for _, ssid := range []string{"HQ-2", "HQ-3"} { // two more events in the site's chain
		if out, err := provctl(t, data, "site", "update", "hq", "--ssid", ssid); err != nil {
			t.Fatalf("site update: %v\n%s", err, out)
		}
	}
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	out, err := provctl(t, data, "audit", "export", "--out", file)
	if err != nil || !strings.Contains(out, "exported") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	head := strings.Fields(out[strings.Index(out, "hash "):])[1]
	if out, err := provctl(t, data, "audit", "verify"); err != nil || !strings.Contains(out, "audit log OK") {
		t.Errorf("server verify: %v %s", err, out)
	}
	if out, err := provctl(t, data, "audit", "verify", file, "--head", head); err != nil || !strings.Contains(out, "audit log OK") {
		t.Errorf("offline verify: %v %s", err, out)
	}
	raw, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	// The lines of each chain; the site's has three events.
	byChain := map[uint16][]int{}
	siteCreate := -1
	for i, l := range lines {
		var ev devices.AuditEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatal(err)
		}
		byChain[ev.Chain] = append(byChain[ev.Chain], i)
		if ev.Action == "site.create" {
			siteCreate = i
		}
	}
	var long []int
	for _, ls := range byChain {
		if len(ls) > len(long) {
			long = ls
		}
	}
	if siteCreate < 0 || len(long) < 3 {
		t.Fatalf("the export lacks a site.create or a chain of 3 events: %d lines", len(lines))
	}
	edited := strings.Replace(lines[siteCreate], `"action":"site.create"`, `"action":"site.delete"`, 1)
	without := func(drop int) string {
		return strings.Join(append(slices.Clone(lines[:drop]), lines[drop+1:]...), "\n")
	}
	for name, content := range map[string]string{
		"was modified":            strings.Join(append(append(slices.Clone(lines[:siteCreate]), edited), lines[siteCreate+1:]...), "\n"),
		"starts at event 2":       without(long[0]),
		"event 3 follows event 1": without(long[1]),
	} {
		bad := filepath.Join(t.TempDir(), "bad.jsonl")
		os.WriteFile(bad, []byte(content), 0o600)
		if _, err := provctl(t, data, "audit", "verify", bad); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("tampered export: %v, want an error naming %q", err, name)
		}
	}
	// Cutting events off the end is caught by the recorded head.
	short := filepath.Join(t.TempDir(), "short.jsonl")
	os.WriteFile(short, []byte(strings.Join(lines[:len(lines)-1], "\n")), 0o600)
	if _, err := provctl(t, data, "audit", "verify", short, "--head", head); err == nil || !strings.Contains(err.Error(), "not the recorded") {
		t.Errorf("truncated export with --head: %v", err)
	}
}

func TestTokens(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	out, err := provctl(t, data, "-o", "json", "token", "create", "lobby-installer", "--role", "installer", "--sites", "hq")
	var created struct {
		ID    string   `json:"id"`
		Token string   `json:"token"`
		Role  string   `json:"role"`
		Sites []string `json:"sites"`
	}
	if err != nil || json.Unmarshal([]byte(out), &created) != nil || created.Token == "" || created.Role != "installer" || len(created.Sites) != 1 {
		t.Fatalf("create: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "token", "create", "x", "--role", "root"); err == nil {
		t.Errorf("unknown role accepted: %s", out)
	}
	if out, err := provctl(t, data, "token", "create", "x", "--role", "viewer", "--sites", "nowhere"); err == nil {
		t.Errorf("token for an unknown site accepted: %s", out)
	}
	// The new token works, within its limits.
	tokFile := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tokFile, []byte(created.Token), 0o600)
	as := func(args ...string) (string, error) {
		var o, e bytes.Buffer
		err := run(context.Background(), append([]string{"--data", data, "--token-file", tokFile}, args...), &o, &e)
		return o.String() + e.String(), err
	}
	if out, err := as("site", "show", "hq"); err != nil {
		t.Errorf("installer reads its site: %v %s", err, out)
	}
	if _, err := as("site", "delete", "hq"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("installer deletes a site: %v", err)
	}
	if out, err := provctl(t, data, "token", "list"); err != nil || !strings.Contains(out, "lobby-installer") || strings.Contains(out, created.Token) {
		t.Errorf("list: %v\n%s", err, out)
	}
	if out, err := provctl(t, data, "token", "revoke", created.ID); err != nil {
		t.Fatalf("revoke: %v %s", err, out)
	}
	if _, err := as("site", "show", "hq"); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("revoked token still works: %v", err)
	}
}

func TestRevokeAndReopen(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(3, "hq")
	_, sum := simulator.Run(context.Background(), bundles, simulator.RunOptions{})
	if sum.Enrolled != 3 {
		t.Fatal(sum)
	}
	if _, err := provctl(t, data, "revoke", bundles[0].Serial); err == nil {
		t.Error("revoke without a reason accepted")
	}
	out, err := provctl(t, data, "revoke", bundles[0].Serial, "--reason", "RMA")
	if err != nil || !strings.Contains(out, "1 devices revoked") {
		t.Fatalf("revoke: %v %s", err, out)
	}
	if out, err := provctl(t, data, "revoke", "--site", "hq", "--reason", "site closed"); err != nil || !strings.Contains(out, "2 devices revoked") {
		t.Errorf("revoke a site (one already revoked): %v %s", err, out)
	}
	// The site's revocation is a job: listed first (the newest), with its
	// progress, and shown alone by its ID.
	out, err = provctl(t, data, "jobs")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err != nil || len(lines) < 3 || !strings.Contains(lines[0], "revoke") || !strings.Contains(lines[0], "done") ||
		!strings.Contains(lines[0], "3/3 done, 2 changed") || !strings.Contains(lines[0], "hq") {
		t.Fatalf("jobs: %v\n%s", err, out)
	}
	id := strings.Fields(lines[0])[0]
	if out, err := provctl(t, data, "jobs", id); err != nil || !strings.HasPrefix(out, id) {
		t.Errorf("jobs %s: %v %s", id, err, out)
	}
	if _, err := provctl(t, data, "jobs", "no-such-job"); err == nil {
		t.Error("an unknown job was shown")
	}
	bundle := filepath.Join(t.TempDir(), "again.json")
	if out, err := provctl(t, data, "reopen", bundles[0].Serial, "--out", bundle); err != nil || !strings.Contains(out, "state claimed") {
		t.Fatalf("reopen: %v %s", err, out)
	}
	again, err := simulator.LoadBundles(filepath.Dir(bundle))
	if err != nil || len(again) != 1 {
		t.Fatal(err)
	}
	d, _ := simulator.NewDevice(again[0])
	if _, err := d.Enroll(context.Background(), simulator.EnrollOptions{}); err != nil {
		t.Errorf("enroll with the re-opened bundle: %v", err)
	}
	if out, err := provctl(t, data, "reopen", bundles[1].Serial+"-nope"); err == nil {
		t.Errorf("reopen an unknown device: %s", out)
	}
}

func TestClaimFlow(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	env.Site("other", "10.30.0.0/24")
	dir := filepath.Join(t.TempDir(), "b")
	if out, err := provctl(t, data, "factory", "mint", "--model", "TH1", "--count", "2", "--out", dir); err != nil || !strings.Contains(out, "labels.csv") {
		t.Fatalf("mint: %v %s", err, out)
	}
	st, _ := os.Stat(filepath.Join(dir, "labels.csv"))
	raw, _ := os.ReadFile(filepath.Join(dir, "labels.csv"))
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if st.Mode().Perm() != 0o600 || len(lines) != 3 {
		t.Fatalf("labels.csv (%v): %s", st.Mode().Perm(), raw)
	}
	bundles, _ := simulator.LoadBundles(dir)
	label := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Split(l, ",")
		label[f[0]] = f
		if strings.Contains(l, bundlesToken(bundles, f[0])) {
			t.Fatal("a label carries the device's claim token")
		}
	}
	if out, err := provctl(t, data, "factory", "labels", dir); err != nil || !strings.Contains(out, "2 labels") {
		t.Errorf("labels: %v %s", err, out)
	}
	if pngs, _ := filepath.Glob(filepath.Join(dir, "labels", "*.png")); len(pngs) != 2 {
		t.Errorf("label PNGs: %v", pngs)
	}
	d0, _ := simulator.NewDevice(bundles[0])
	if _, err := d0.Enroll(context.Background(), simulator.EnrollOptions{}); simulator.Reason(err) != "not_claimed" {
		t.Fatalf("unclaimed device enrolls: %v", err)
	}

	out, _ := provctl(t, data, "-o", "json", "token", "create", "lobby", "--role", "installer", "--sites", "hq")
	var tok struct{ Token string }
	json.Unmarshal([]byte(out), &tok)
	tokFile := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tokFile, []byte(tok.Token), 0o600)
	installer := func(args ...string) (string, error) {
		var o, e bytes.Buffer
		err := run(context.Background(), append([]string{"--data", data, "--token-file", tokFile}, args...), &o, &e)
		return o.String() + e.String(), err
	}
	code0, url0 := label[bundles[0].Serial][1], label[bundles[0].Serial][2]
	if _, err := installer("claim", code0, "--site", "other"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("claim for a site the token does not cover: %v", err)
	}
	wrong := enroll.NewClaimCode(bundles[0].Serial).String() // well formed, another secret
	if _, err := installer("claim", wrong, "--site", "hq"); err == nil || !strings.Contains(err.Error(), "claim_rejected") {
		t.Errorf("claim with a wrong secret: %v", err)
	}
	if out, err := installer("claim", url0, "--site", "hq"); err != nil || !strings.Contains(out, "claimed for site hq") {
		t.Fatalf("claim by URL: %v %s", err, out)
	}
	if res, err := d0.Enroll(context.Background(), simulator.EnrollOptions{}); err != nil || !strings.HasPrefix(res.Network.Address, "10.20.0.") {
		t.Errorf("enroll after the claim: %v", err)
	}
	if _, err := installer("claim", code0, "--site", "hq"); err == nil || !strings.Contains(err.Error(), "claim_rejected") {
		t.Errorf("second use of a claim code: %v", err)
	}
	// Guessing: a well-formed code with a wrong secret, repeatedly.
	serial1 := bundles[1].Serial
	for i := range 5 {
		guess := enroll.NewClaimCode(serial1).String()
		if _, err := installer("claim", guess, "--site", "hq"); err == nil || !strings.Contains(err.Error(), "claim_rejected") {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	if _, err := installer("claim", label[serial1][1], "--site", "hq"); err == nil || !strings.Contains(err.Error(), "429") {
		t.Errorf("right code after 5 wrong guesses: %v, want throttled", err)
	}
	if out, err := provctl(t, data, "audit", "--limit", "1000"); err != nil || !strings.Contains(out, "device.claim") {
		t.Errorf("audit lacks the claim: %v", err)
	}
}

func bundlesToken(bs []wire.Bundle, serial string) string {
	for _, b := range bs {
		if b.Serial == serial {
			return b.ClaimToken
		}
	}
	return "\x00"
}

func TestInventory(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	bundles := env.Mint(4, "hq")
	_, sum := simulator.Run(context.Background(), bundles[:3], simulator.RunOptions{Transport: "mqtt"})
	if sum.Enrolled != 3 {
		t.Fatal(sum)
	}
	outs, _ := simulator.Run(context.Background(), bundles[3:], simulator.RunOptions{Transport: "mqtt"})
	s, err := outs[0].Device.ConnectMQTT(context.Background(), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := s.Config(context.Background())
	s.ReportState(context.Background(), wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: "9.9.9", Health: "ok"})
	s.Close()
	seenSerial := bundles[3].Serial
	waitList := func(args ...string) []string {
		t.Helper()
		out, err := provctl(t, data, append([]string{"-o", "json", "devices", "list"}, args...)...)
		if err != nil {
			t.Fatalf("list %v: %v", args, err)
		}
		var r struct{ Devices []struct{ Serial string } }
		json.Unmarshal([]byte(out), &r)
		var serials []string
		for _, d := range r.Devices {
			serials = append(serials, d.Serial)
		}
		return serials
	}
	for i := 0; ; i++ {
		if got := waitList("--firmware", "9.9.9"); len(got) == 1 && got[0] == seenSerial {
			break
		}
		if i == 100 {
			t.Fatal("state report never arrived")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for name, c := range map[string]struct {
		args []string
		n    int
	}{
		"model":          {[]string{"--model", "TEST"}, 4},
		"other model":    {[]string{"--model", "NOPE"}, 0},
		"active":         {[]string{"--state", "active"}, 1},
		"seen within 1h": {[]string{"--seen-within", "1h"}, 1},
		"not seen in 1h": {[]string{"--not-seen-within", "1h"}, 3},
		"paged by 2":     {[]string{"--limit", "2"}, 2},
	} {
		if got := waitList(c.args...); len(got) != c.n {
			t.Errorf("%s: %d devices %v, want %d", name, len(got), got, c.n)
		}
	}
	csvOut, err := provctl(t, data, "devices", "export")
	if lines := strings.Split(strings.TrimSpace(csvOut), "\n"); err != nil || len(lines) != 5 || !strings.HasPrefix(lines[0], "serial,id,model") {
		t.Errorf("csv export: %v\n%s", err, csvOut)
	}
	jsonOut, err := provctl(t, data, "devices", "export", "--format", "json", "--state", "active")
	if lines := strings.Split(strings.TrimSpace(jsonOut), "\n"); err != nil || len(lines) != 1 || !strings.Contains(lines[0], seenSerial) {
		t.Errorf("json export: %v\n%s", err, jsonOut)
	}
	if out, err := provctl(t, data, "devices", "configure", "--site", "hq", "--ntp", "ntp.lab.example"); err != nil || !strings.Contains(out, "4 devices changed; new config pushed to 4") {
		t.Errorf("configure: %v %s", err, out)
	}
	if out, err := provctl(t, data, "devices", "configure", seenSerial, "--clear"); err != nil || !strings.Contains(out, "1 devices changed") {
		t.Errorf("configure --clear: %v %s", err, out)
	}
	hist, err := provctl(t, data, "devices", "history", seenSerial)
	if err != nil || !strings.Contains(hist, "device.enroll") || !strings.Contains(hist, "device.active") || strings.Count(hist, "device.reconfigure") != 2 {
		t.Errorf("history: %v\n%s", err, hist)
	}
}

// Re-enrollment policies: keep-identity keeps the device UUID, new-identity
// gives a re-opened device a new one (its history stays with its serial).
func TestReenrollPolicies(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("keep", "10.20.0.0/24")
	env.Site("fresh", "10.30.0.0/24")
	if out, err := provctl(t, data, "site", "update", "fresh", "--reenroll", "new-identity"); err != nil {
		t.Fatalf("update: %v %s", err, out)
	}
	if _, err := provctl(t, data, "site", "update", "keep", "--reenroll", "sometimes"); err == nil {
		t.Error("unknown policy accepted")
	}
	for _, c := range []struct {
		site   string
		sameID bool
	}{{"keep", true}, {"fresh", false}} {
		b := env.Mint(1, c.site)[0]
		d, _ := simulator.NewDevice(b)
		first, err := d.Enroll(context.Background(), simulator.EnrollOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := provctl(t, data, "revoke", b.Serial, "--reason", "test"); err != nil {
			t.Fatal(err)
		}
		bundle := filepath.Join(t.TempDir(), "b.json")
		if _, err := provctl(t, data, "reopen", b.Serial, "--out", bundle); err != nil {
			t.Fatal(err)
		}
		again, _ := simulator.LoadBundles(filepath.Dir(bundle))
		d2, _ := simulator.NewDevice(again[0])
		second, err := d2.Enroll(context.Background(), simulator.EnrollOptions{})
		if err != nil {
			t.Fatalf("%s: enroll after reopen: %v", c.site, err)
		}
		if (second.DeviceID == first.DeviceID) != c.sameID {
			t.Errorf("%s: device ID %s -> %s, want same=%v", c.site, first.DeviceID, second.DeviceID, c.sameID)
		}
		if d2.Chain[0].Subject.CommonName != second.DeviceID {
			t.Errorf("%s: certificate names %s", c.site, d2.Chain[0].Subject.CommonName)
		}
		hist, err := provctl(t, data, "devices", "history", b.Serial)
		if err != nil || strings.Count(hist, "device.enroll") != 2 || !strings.Contains(hist, "device.revoke") {
			t.Errorf("%s: history across the reopen: %v\n%s", c.site, err, hist)
		}
		if out, err := provctl(t, data, "-o", "json", "devices", "list", "--site", c.site); err != nil || strings.Count(out, `"serial"`) != 1 {
			t.Errorf("%s: the site lists %d devices, want 1: %v", c.site, strings.Count(out, `"serial"`), err)
		}
	}
}

func TestFirmwareCLI(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	dev := env.Mint(1, "hq")[0]
	img := filepath.Join(t.TempDir(), "th1-1.0.0.bin")
	os.WriteFile(img, bytes.Repeat([]byte("firmware"), 10_000), 0o600)
	steps := []struct {
		args []string
		want string
		fail bool
	}{
		{[]string{"firmware", "add", img, "--model", "TEST", "--version", "1.0.0", "--notes", "first"}, "added TEST 1.0.0: 80000 bytes", false},
		{[]string{"firmware", "add", img, "--model", "TEST", "--version", "1.0.0"}, "added TEST 1.0.0", false}, // the same bytes: idempotent
		{[]string{"firmware", "add", "main.go", "--model", "TEST", "--version", "1.0.0"}, "exists (HTTP 409)", true},
		{[]string{"firmware", "add", img, "--model", "../x", "--version", "1"}, "HTTP 400", true},
		{[]string{"firmware", "rollout", "--model", "TEST", "--version", "1.0.0", "--site", "hq", "--percent", "25"}, "rollout of TEST 1.0.0: 25%, active", false},
		{[]string{"firmware", "pause", "--model", "TEST", "--site", "hq"}, "paused", false},
		{[]string{"firmware", "rollout", "--model", "TEST", "--version", "1.0.0", "--site", "hq", "--percent", "50"}, "resume it first", true},
		{[]string{"firmware", "pin", dev.Serial, "--version", "1.0.0"}, "pinned to \"1.0.0\"", false},
		{[]string{"firmware", "list"}, "rollout TEST 1.0.0 at hq: 25% (paused), 0 of 0 devices on it", false},
	}
	for _, s := range steps {
		out, err := provctl(t, data, s.args...)
		if (err != nil) != s.fail || !strings.Contains(out+fmt.Sprint(err), s.want) {
			t.Errorf("provctl %s: %q %v, want %q (fail=%v)", strings.Join(s.args, " "), out, err, s.want, s.fail)
		}
	}
	out, _ := provctl(t, data, "-o", "json", "firmware", "list")
	if !strings.Contains(out, `"public_key": "-----BEGIN PUBLIC KEY-----`) {
		t.Errorf("firmware list -o json: %s", out)
	}
}

// TestAuditNewestFirst: provctl audit shows the newest events first and
// pages back with the cursor it prints.
func TestAuditNewestFirst(t *testing.T) {
	env := servertest.Start(t)
	for _, name := range []string{"first", "second", "third"} {
		env.Site(name, "10.20.0.0/24")
	}
	out, err := provctl(t, env.DataDir, "audit", "--limit", "2")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "site.create") || !strings.Contains(lines[0], "third") ||
		!strings.Contains(lines[1], "second") || !strings.HasPrefix(lines[2], "older: provctl audit --before ") {
		t.Fatalf("the newest two events:\n%s", out)
	}
	cursor := strings.Fields(lines[2])[4]
	out, err = provctl(t, env.DataDir, "audit", "--before", cursor, "--limit", "2")
	if err != nil {
		t.Fatal(err)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "first") || !strings.Contains(lines[1], "token.create") {
		t.Errorf("the page before:\n%s", out)
	}
}

// After the oldest events are pruned, an export starts with the chains'
// anchors and verifies on its own with the same head hash; without its
// anchor lines it does not.
func TestAuditExportAfterPruning(t *testing.T) {
	env := servertest.Start(t)
	data := env.DataDir
	env.Site("hq", "10.20.0.0/24")
	env.Mint(3, "hq")
	before, err := env.Server.Store().VerifyAudit(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	for _, ssid := range []string{"HQ-2", "HQ-3"} {
		if out, err := provctl(t, data, "site", "update", "hq", "--ssid", ssid); err != nil {
			t.Fatalf("site update: %v\n%s", err, out)
		}
	}
	n, err := env.Server.Store().PruneAudit(context.Background(), cut)
	if err != nil || n != before.Events {
		t.Fatalf("pruned %d (%v), want the %d events before the cut", n, err, before.Events)
	}
	file := filepath.Join(t.TempDir(), "audit.jsonl")
	out, err := provctl(t, data, "audit", "export", "--out", file)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	head := strings.Fields(out[strings.Index(out, "hash "):])[1]
	if out, err := provctl(t, data, "audit", "verify"); err != nil || !strings.Contains(out, "audit log OK") {
		t.Errorf("server verify after pruning: %v %s", err, out)
	}
	if out, err := provctl(t, data, "audit", "verify", file, "--head", head); err != nil || !strings.Contains(out, "audit log OK") {
		t.Errorf("offline verify after pruning: %v %s", err, out)
	}
	raw, _ := os.ReadFile(file)
	var anchors, events []string
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if strings.HasPrefix(l, `{"anchor":`) {
			anchors = append(anchors, l)
		} else {
			events = append(events, l)
		}
	}
	if len(anchors) == 0 || len(events) != 2 {
		t.Fatalf("export: %d anchors, %d events; want anchors and the 2 site updates", len(anchors), len(events))
	}
	bare := filepath.Join(t.TempDir(), "bare.jsonl")
	os.WriteFile(bare, []byte(strings.Join(events, "\n")), 0o600)
	if _, err := provctl(t, data, "audit", "verify", bare); err == nil || !strings.Contains(err.Error(), "earlier events removed") {
		t.Errorf("export without its anchors: %v", err)
	}
}
