package server_test

import (
	"bufio"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provisiond/provisiond/internal/testtools"

	"github.com/chromedp/chromedp"

	"github.com/provisiond/provisiond/devices"
	"github.com/provisiond/provisiond/internal/labels"
	"github.com/provisiond/provisiond/internal/servertest"
	"github.com/provisiond/provisiond/simulator"
	"github.com/provisiond/provisiond/transport/httpapi"
	"github.com/provisiond/provisiond/transport/wire"
)

// artifacts is where the browser tests leave their screenshots (git-ignored).
var artifacts = filepath.Join("..", "..", "testdata", "artifacts", "console")

// chromium finds Debian's chromium (see package testtools).
func chromium(t *testing.T) string {
	t.Helper()
	return testtools.Need(t, "chromium", "chromium-browser", "google-chrome")
}

// browser starts headless Chromium whose camera shows the frames of y4m.
func browser(t *testing.T, y4m string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,                               // CI runs as root
		chromedp.Flag("ignore-certificate-errors", true), // the server's certificate chains to the test's own root
		chromedp.Flag("use-fake-ui-for-media-stream", true),
		chromedp.Flag("use-fake-device-for-media-stream", true),
		chromedp.Flag("use-file-for-fake-video-capture", y4m),
		chromedp.WindowSize(1100, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf))
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// consoleSignIn signs out of the console whoever was signed in and signs in
// with token.
func consoleSignIn(t *testing.T, ctx context.Context, base, token string) {
	t.Helper()
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/signout"),
		chromedp.WaitVisible(chromedp.ID("signin")),
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.CSS(`#signin-form button[type=submit]`)),
	); err != nil {
		t.Fatalf("sign in to the console: %v", err)
	}
}

// screenshot saves the page as artifacts/name.png.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100) /* 100: PNG */)
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(artifacts, name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// labelVideo renders the device's printed label (the PNG `provctl factory
// labels` writes) into a 640x480 Y4M clip, which Chromium's fake camera
// plays in a loop.
func labelVideo(t *testing.T, l labels.Label) string {
	t.Helper()
	dir := t.TempDir()
	if err := labels.WriteAll(dir, []labels.Label{l}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, l.Serial+".png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	label, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	const w, h = 640, 480
	frame := image.NewGray(image.Rect(0, 0, w, h))
	for i := range frame.Pix {
		frame.Pix[i] = 0xff
	}
	b := label.Bounds()
	scale := max(1, min(440/b.Dy(), 600/b.Dx()))
	ox, oy := (w-b.Dx()*scale)/2, (h-b.Dy()*scale)/2
	for y := range b.Dy() * scale {
		for x := range b.Dx() * scale {
			frame.SetGray(ox+x, oy+y, color.GrayModel.Convert(label.At(b.Min.X+x/scale, b.Min.Y+y/scale)).(color.Gray))
		}
	}
	path := filepath.Join(dir, "label.y4m")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(out)
	fmt.Fprintf(bw, "YUV4MPEG2 W%d H%d F10:1 Ip A1:1 C420jpeg\n", w, h)
	chroma := strings.Repeat("\x80", w*h/4) // no colour
	for range 10 {
		bw.WriteString("FRAME\n")
		bw.Write(frame.Pix) // luma: the grey levels
		bw.WriteString(chroma)
		bw.WriteString(chroma)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	return path
}

// TestWebConsole drives the installer page and the operator console in
// headless Chromium: an installer claims one device by typing its code,
// one by scanning its printed label with the camera and one by opening the
// label's URL; the device enrolls and the page shows it come up; an
// operator revokes it in the console and the device is cut off.
func TestWebConsole(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	env.Site("lab", "10.30.0.0/24")
	minted, err := env.Client.Mint(ctxT(t), "TH1", 3, "")
	if err != nil {
		t.Fatal(err)
	}
	base := "https://" + env.Server.HTTPAddr().String()
	var inst httpapi.TokenCreated
	if err := env.Client.Do(ctxT(t), "POST", "/api/v1/tokens", httpapi.TokenRequest{Name: "installer", Role: devices.RoleInstaller, Sites: []string{"hq"}}, &inst); err != nil {
		t.Fatal(err)
	}
	typed, scanned, linked := 0, 1, 2
	video := labelVideo(t, labels.Label{Serial: minted.Codes[scanned].Serial, URL: minted.Codes[scanned].URL(base)})
	ctx := browser(t, video)

	step := func(id string) string {
		state, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID(id), "data-state"))
		if err != nil {
			t.Fatal(err)
		}
		return state.Value
	}
	waitDone := func(id string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#`+id+`[data-state="done"]`))); err != nil {
			t.Fatalf("%s never done: %v", id, err)
		}
	}

	// Sign in as the installer; only the token's site is offered.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/claim"),
		chromedp.SendKeys(chromedp.ID("token"), inst.Secret),
		chromedp.Click(chromedp.CSS(`#signin-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.ID("claim")),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#site option").length > 0`),
	); err != nil {
		t.Fatal(err)
	}
	options, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[...document.querySelectorAll("#site option")].map(o => o.value).join(",")`))
	if err != nil {
		t.Fatal(err)
	}
	if options != "hq" {
		t.Errorf("sites offered to an installer limited to hq: %q", options)
	}
	screenshot(t, ctx, "installer-signed-in")

	// 1. Typing the code.
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("code"), minted.Codes[typed].String()),
		chromedp.Click(chromedp.ID("claim-button")),
		chromedp.WaitVisible(chromedp.ID("progress")),
	); err != nil {
		t.Fatal(err)
	}
	if step("step-claimed") != "done" || step("step-enrolled") != "waiting" {
		t.Errorf("after the claim: claimed %s, enrolled %s", step("step-claimed"), step("step-enrolled"))
	}
	if d, _ := env.Server.Store().DeviceBySerial(context.Background(), minted.Bundles[typed].Serial); d.Site != "hq" || d.State != devices.StateClaimed {
		t.Fatalf("device after the claim: site %q state %s", d.Site, d.State)
	}
	screenshot(t, ctx, "installer-waiting")
	// The device powers on: it enrolls, then applies and acknowledges its config.
	dev, _ := simulator.NewDevice(minted.Bundles[typed])
	res, err := dev.Enroll(ctxT(t), simulator.EnrollOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitDone("step-enrolled")
	s, err := dev.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan struct{})
	s.Close()
	s, err = dev.ConnectMQTT(ctxT(t), simulator.MQTTOptions{OnConnectionLost: func(error) { close(lost) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg, err := s.Config(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReportState(ctxT(t), wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: "1.0.0", Health: "ok"}); err != nil {
		t.Fatal(err)
	}
	waitDone("step-applied")
	text, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("step-enrolled")))
	if !strings.Contains(text, res.Lease.Address) {
		t.Errorf("enrolled step says %q, want the address %s", text, res.Lease.Address)
	}
	screenshot(t, ctx, "installer-device-up")

	// 2. Scanning the printed label with the camera.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("another")),
		chromedp.WaitVisible(chromedp.ID("claim")),
		chromedp.Click(chromedp.ID("scan")),
		chromedp.WaitVisible(chromedp.ID("camera")),
		chromedp.Poll[chromedp.Void](`document.getElementById("code").value.startsWith("PD1:")`, chromedp.WithPollingTimeout(60*time.Second)),
	); err != nil {
		status, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("claim-status")))
		video, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => { const v = document.getElementById("video");
			return "width " + v.videoWidth + ", height " + v.videoHeight + ", readyState " + v.readyState + ", paused " + v.paused +
				", time " + v.currentTime + ", BarcodeDetector " + ("BarcodeDetector" in window); })()`))
		t.Fatalf("scanning the label: %v (page says %q; video: %s)", err, status, video)
	}
	code, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("code")))
	if err != nil {
		t.Fatal(err)
	}
	if code != minted.Codes[scanned].String() {
		t.Fatalf("scanned %q, want %q", code, minted.Codes[scanned].String())
	}
	screenshot(t, ctx, "installer-scanned")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("claim-button")), chromedp.WaitVisible(chromedp.ID("progress"))); err != nil {
		t.Fatal(err)
	}
	if d, _ := env.Server.Store().DeviceBySerial(context.Background(), minted.Bundles[scanned].Serial); d.Site != "hq" {
		t.Errorf("scanned device not claimed: site %q", d.Site)
	}

	// 3. Opening the label's URL (what the phone's camera app does): the
	// code is filled in and the secret leaves the address bar.
	if err := chromedp.Do(ctx,
		chromedp.Navigate("about:blank"), // a phone opens the URL afresh
		chromedp.Navigate(minted.Codes[linked].URL(base)),
		chromedp.WaitVisible(chromedp.ID("claim")),
		chromedp.Poll[chromedp.Void](`document.getElementById("code").value !== ""`),
	); err != nil {
		t.Fatal(err)
	}
	code, _ = chromedp.Run(ctx, chromedp.Value(chromedp.ID("code")))
	url, _ := chromedp.Run(ctx, chromedp.Location())
	if code != minted.Codes[linked].String() || strings.Contains(url, "#") {
		t.Errorf("from the label URL: code %q, address bar %q", code, url)
	}

	// The operator console: the device is in the inventory; revoking it
	// asks for a confirmation that names it, then cuts its session.
	serial := minted.Bundles[typed].Serial
	consoleSignIn(t, ctx, base, env.AdminToken())
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`a[href="#/device/`+serial+`"]`)),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-devices")
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/sites"), chromedp.WaitVisible(chromedp.CSS(`a[href="#/site/hq"]`)),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-sites")
	revokeButton := chromedp.Search(`//button[text()="Revoke device"]`)
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/device/"+serial),
		chromedp.WaitVisible(revokeButton),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-device")
	if err := chromedp.Do(ctx,
		chromedp.Click(revokeButton),
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.SendKeys(chromedp.ID("confirm-reason"), "stolen from the lobby"),
	); err != nil {
		t.Fatal(err)
	}
	named, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("confirm-list")))
	if !strings.Contains(named, serial) {
		t.Errorf("the confirmation names %q, not the device %s", named, serial)
	}
	screenshot(t, ctx, "console-revoke-confirm")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.ID("confirm-ok")),
		chromedp.Poll[chromedp.Void](`document.getElementById("status").textContent.startsWith("Revoked 1 device")`),
	); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked device's MQTT session was not cut")
	}
	d, _ := env.Server.Store().DeviceBySerial(context.Background(), serial)
	if d.State != devices.StateRevoked {
		t.Errorf("state after revoking in the console: %s", d.State)
	}
	evs, _ := env.Server.Store().History(context.Background(), serial, 100)
	if e := lastAction(evs, "device.revoke"); e == nil || e.Detail["reason"] != "stolen from the lobby" {
		t.Errorf("revocation audit event: %+v", e)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/console#/audit"), chromedp.WaitVisible(chromedp.Search(`//td[text()="device.revoke"]`))); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-audit")
}

// TestConsoleFleetActions drives the console's fleet operations in
// headless Chromium: a site's profile changed and pushed, one device
// reconfigured, two selected devices and a whole batch revoked (each after
// a confirmation that names them), a token created; and a viewer refused.
func TestConsoleFleetActions(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	first, err := env.Client.Mint(ctxT(t), "TH1", 4, "hq")
	if err != nil {
		t.Fatal(err)
	}
	second, err := env.Client.Mint(ctxT(t), "TH2", 2, "hq")
	if err != nil {
		t.Fatal(err)
	}
	outs, sum := simulator.Run(ctxT(t), append(first.Bundles, second.Bundles...), simulator.RunOptions{})
	if sum.Enrolled != 6 {
		t.Fatal(sum)
	}
	online, err := outs[0].Device.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer online.Close()
	if _, err := online.Config(ctxT(t)); err != nil { // the config at connect
		t.Fatal(err)
	}
	base := "https://" + env.Server.HTTPAddr().String()
	ctx := browser(t, labelVideo(t, labels.Label{Serial: "TH1-NOTHING", URL: "none"}))
	status := func(prefix string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`document.getElementById("status").textContent.startsWith(`+quoted(prefix)+`)`)); err != nil {
			got, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("status")))
			t.Fatalf("status %q, want %q...: %v", got, prefix, err)
		}
	}
	confirm := func(reason string) string {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("confirm")), chromedp.SendKeys(chromedp.ID("confirm-reason"), reason)); err != nil {
			t.Fatal(err)
		}
		named, _ := chromedp.Run(ctx, chromedp.Text(chromedp.ID("confirm-list")))
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("confirm-ok"))); err != nil {
			t.Fatal(err)
		}
		return named
	}
	consoleSignIn(t, ctx, base, env.AdminToken())
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`input[name=pick]`)),
	); err != nil {
		t.Fatal(err)
	}

	// The site's profile: a new SSID, pushed to every enrolled device.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/site/hq"),
		chromedp.WaitVisible(chromedp.ID("s-ssid")),
		chromedp.Clear(chromedp.ID("s-ssid")),
		chromedp.SendKeys(chromedp.ID("s-ssid"), "hq-second-floor"),
		chromedp.Click(chromedp.Search(`//button[text()="Save and push to the site's devices"]`)),
	); err != nil {
		t.Fatal(err)
	}
	status("Saved: profile version 2, pushed to 6 enrolled devices.")
	screenshot(t, ctx, "console-site")
	if cfg, err := online.Config(ctxT(t)); err != nil || cfg.WiFi.SSID != "hq-second-floor" {
		t.Errorf("pushed config: %+v %v", cfg.WiFi, err)
	}

	// One device's own Wi-Fi.
	one := outs[3].Serial
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/device/"+one),
		chromedp.WaitVisible(chromedp.ID("o-ssid")),
		chromedp.SendKeys(chromedp.ID("o-ssid"), "lab-bench"),
		chromedp.Click(chromedp.Search(`//button[text()="Apply override"]`)),
	); err != nil {
		t.Fatal(err)
	}
	status("Reconfigured: 1 config pushed.")
	if d, _ := env.Server.Store().DeviceBySerial(context.Background(), one); d.Override == nil || d.Override.SSID != "lab-bench" {
		t.Errorf("override after the console: %+v", d.Override)
	}

	// Two devices picked in the list.
	picked := []string{outs[1].Serial, outs[2].Serial}
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/devices"),
		chromedp.WaitVisible(chromedp.CSS(`input[value="`+picked[0]+`"]`)),
		chromedp.Click(chromedp.CSS(`input[value="`+picked[0]+`"]`)),
		chromedp.Click(chromedp.CSS(`input[value="`+picked[1]+`"]`)),
		chromedp.Click(chromedp.Search(`//button[text()="Revoke selected"]`)),
	); err != nil {
		t.Fatal(err)
	}
	// Exactly the two serials (counted as list entries: a random serial
	// may contain its own prefix letters).
	if named := confirm("returned to the vendor"); !strings.Contains(named, picked[0]) || !strings.Contains(named, picked[1]) || len(strings.Fields(named)) != 2 {
		t.Errorf("the confirmation names %q, want exactly %v", named, picked)
	}
	status("Revoked 2 devices.")

	// A whole batch, through the filter.
	batch := second.Batch.Batch.ID
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("f-batch"), batch),
		chromedp.Click(chromedp.Search(`//button[text()="Filter"]`)),
		chromedp.WaitVisible(chromedp.CSS(`input[value="`+second.Bundles[1].Serial+`"]`)),
		chromedp.Click(chromedp.Search(`//button[text()="Revoke whole batch or site…"]`)),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-revoke-batch")
	if named := confirm("bad flash"); !strings.Contains(named, second.Bundles[0].Serial) || !strings.Contains(named, second.Bundles[1].Serial) || len(strings.Fields(named)) != 2 {
		t.Errorf("the batch confirmation names %q", named)
	}
	status("Revoked 2 devices.")
	for _, s := range append(picked, second.Bundles[0].Serial, second.Bundles[1].Serial) {
		if d, _ := env.Server.Store().DeviceBySerial(context.Background(), s); d.State != devices.StateRevoked {
			t.Errorf("%s: %s after revoking in the console", s, d.State)
		}
	}
	for _, s := range []string{outs[0].Serial, one} {
		if d, _ := env.Server.Store().DeviceBySerial(context.Background(), s); d.State == devices.StateRevoked {
			t.Errorf("%s was revoked but not named", s)
		}
	}

	// A token for the night shift: its secret is shown once, and it works.
	if err := chromedp.Do(ctx,
		chromedp.Navigate(base+"/console#/tokens"),
		chromedp.WaitVisible(chromedp.ID("t-name")),
		chromedp.SendKeys(chromedp.ID("t-name"), "night-shift"),
		chromedp.Click(chromedp.Search(`//button[text()="Create token"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector("#view .status").textContent.includes("shown once")`),
	); err != nil {
		t.Fatal(err)
	}
	screenshot(t, ctx, "console-tokens")
	shown, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#view .status")))
	secret := shown[strings.LastIndex(shown, " ")+1:]
	viewer, err := httpapi.NewClient(base, secret, env.Server.CA().RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.Info(ctxT(t)); err != nil {
		t.Errorf("the token the console created does not work: %v", err)
	}

	// That viewer may look but not revoke: the console shows the refusal.
	consoleSignIn(t, ctx, base, secret)
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`input[name=pick]`)),
		chromedp.Navigate(base+"/console#/device/"+one),
		chromedp.Click(chromedp.Search(`//button[text()="Revoke device"]`)),
	); err != nil {
		t.Fatal(err)
	}
	confirm("should not happen")
	status("Not allowed for this token")
	if d, _ := env.Server.Store().DeviceBySerial(context.Background(), one); d.State == devices.StateRevoked {
		t.Error("a viewer revoked a device through the console")
	}
}

// TestConsoleFirmware shows a rollout's progress and failures in the
// console and pauses it from there.
func TestConsoleFirmware(t *testing.T) {
	env := servertest.Start(t)
	env.Site("hq", "10.20.0.0/24")
	outs, sum := simulator.Run(ctxT(t), env.Mint(2, "hq"), simulator.RunOptions{})
	if sum.Enrolled != 2 {
		t.Fatal(sum)
	}
	base := "https://" + env.Server.HTTPAddr().String()
	if err := env.Client.DoRaw(ctxT(t), "POST", "/api/v1/firmware?model=TEST&version=2.0&notes=faster+boot", "application/octet-stream", strings.NewReader(strings.Repeat("image", 1000)), nil); err != nil {
		t.Fatal(err)
	}
	// One device runs 2.0 and is fine, the other refused it.
	for i, o := range outs {
		s, err := o.Device.ConnectMQTT(ctxT(t), simulator.MQTTOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := s.Config(ctxT(t))
		rep := wire.StateReport{ConfigVersion: cfg.ConfigVersion, FirmwareVersion: "2.0", Health: "ok"}
		if i == 1 {
			rep.FirmwareVersion, rep.Health = "1.0", "firmware_refused"
		}
		if err := s.ReportState(ctxT(t), rep); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	waitFor(t, func() bool {
		d, _ := env.Server.Store().DeviceBySerial(context.Background(), outs[1].Serial)
		return d.Health == "firmware_refused"
	}, "the state reports")
	ctx := browser(t, labelVideo(t, labels.Label{Serial: "TH1-NOTHING", URL: "none"}))
	row := chromedp.CSS(`tr[data-rollout="TEST@hq"]`)
	consoleSignIn(t, ctx, base, env.AdminToken())
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`input[name=pick]`)),
		chromedp.Navigate(base+"/console#/firmware"),
		chromedp.WaitVisible(chromedp.ID("r-model")),
		chromedp.SendKeys(chromedp.ID("r-model"), "TEST"),
		chromedp.SendKeys(chromedp.ID("r-site"), "hq"),
		chromedp.SendKeys(chromedp.ID("r-version"), "2.0"),
		chromedp.Clear(chromedp.ID("r-percent")),
		chromedp.SendKeys(chromedp.ID("r-percent"), "100"),
		chromedp.Click(chromedp.Search(`//button[text()="Roll out"]`)),
		chromedp.WaitVisible(row),
	); err != nil {
		t.Fatal(err)
	}
	text, _ := chromedp.Run(ctx, chromedp.Text(row))
	for _, want := range []string{"1 of 2 on 2.0", "100%", "active", "2.0: 1", "1.0: 1"} {
		if !strings.Contains(text, want) {
			t.Errorf("rollout row %q lacks %q", text, want)
		}
	}
	if unhealthy, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`tr[data-rollout="TEST@hq"] td.error`))); unhealthy != "1" {
		t.Errorf("failures shown: %q", unhealthy)
	}
	screenshot(t, ctx, "console-firmware")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.Search(`//tr[@data-rollout="TEST@hq"]//button[text()="Pause"]`)),
		chromedp.Poll[chromedp.Void](`document.getElementById("status").textContent.includes("paused")`),
	); err != nil {
		t.Fatal(err)
	}
	var view httpapi.FirmwareView
	if err := env.Client.Do(ctxT(t), "GET", "/api/v1/firmware", nil, &view); err != nil || len(view.Rollouts) != 1 || view.Rollouts[0].State != "paused" {
		t.Errorf("after Pause in the console: %+v %v", view.Rollouts, err)
	}
}
