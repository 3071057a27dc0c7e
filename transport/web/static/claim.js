// The installer page: sign in, read a label (the URL's fragment, a camera
// scan or typing), claim the device for a site, then watch it come up.
import { api, el, clear, signIn, token } from "/ui/common.js";

const $ = (id) => document.getElementById(id);

// A label's URL carries the claim code in its fragment, which the browser
// never sends to a server. Take it, then drop it from the address bar and
// history so the secret does not linger there.
let fromURL = takeFragment();
function takeFragment() {
  const code = decodeURIComponent(location.hash.replace(/^#/, ""));
  if (code) history.replaceState(null, "", location.pathname);
  return code;
}
// Another label opened while the page is open only changes the fragment.
window.addEventListener("hashchange", () => {
  fromURL = takeFragment();
  if (fromURL.startsWith("PD1:")) {
    $("code").value = fromURL;
    if (!$("progress").hidden) $("another").click();
  }
});

async function start() {
  $("signin").hidden = true;
  $("claim").hidden = false;
  if (fromURL.startsWith("PD1:")) $("code").value = fromURL;
  const sites = (await api("GET", "/api/v1/sites")).sites || [];
  const sel = clear($("site"));
  for (const s of sites) sel.append(el("option", { value: s.name }, s.name));
  if (sites.length === 0) $("claim-status").textContent = "This token may not claim for any site.";
}

signIn($("signin-form"), $("signin-status"), start);
if (token()) api("GET", "/api/v1/info").then(start, () => {});

// Scanning: frames from the camera are read with the browser's
// BarcodeDetector where it has one, otherwise sent to the server's QR
// decoder (POST /api/v1/qr-decode), twice a second until a code is found.
let stream = null, timer = null;
$("scan").addEventListener("click", async () => {
  const status = $("claim-status");
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) {
    status.textContent = "No camera: " + e.message + ". Type the code instead.";
    return;
  }
  const video = $("video");
  video.srcObject = stream;
  await video.play();
  $("camera").hidden = false;
  status.textContent = "Point the camera at the label's QR code.";
  const detector = "BarcodeDetector" in window ? new window.BarcodeDetector({ formats: ["qr_code"] }) : null;
  const canvas = document.createElement("canvas");
  let busy = false;
  timer = setInterval(async () => {
    if (busy || !video.videoWidth) return;
    busy = true;
    try {
      let text = "";
      if (detector) {
        const found = await detector.detect(video);
        if (found.length) text = found[0].rawValue;
      } else {
        canvas.width = video.videoWidth; canvas.height = video.videoHeight;
        canvas.getContext("2d").drawImage(video, 0, 0);
        const blob = await new Promise((ok) => canvas.toBlob(ok, "image/png"));
        try { text = (await api("POST", "/api/v1/qr-decode", blob, "image/png")).text; } catch (e) { if (e.status !== 422) throw e; }
      }
      const code = text.includes("#") ? text.slice(text.indexOf("#") + 1) : text;
      if (code.startsWith("PD1:")) {
        $("code").value = code;
        status.textContent = "Label read: " + code.split(":")[1];
        stopScan();
      }
    } catch (e) {
      status.textContent = "Scan failed: " + e.message;
    } finally { busy = false; }
  }, 500);
});
function stopScan() {
  clearInterval(timer); timer = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("camera").hidden = true;
}
$("stop-scan").addEventListener("click", stopScan);

$("claim-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const status = $("claim-status");
  status.classList.remove("error");
  $("claim-button").disabled = true;
  try {
    const d = await api("POST", "/api/v1/claims", { code: $("code").value.trim(), site: $("site").value });
    stopScan();
    $("code").value = "";
    status.textContent = "";
    watch(d);
  } catch (e) {
    status.classList.add("error");
    status.textContent = "Not claimed: " + e.message;
  } finally { $("claim-button").disabled = false; }
});

// watch shows the device's progress until it has applied its config,
// asking the API once a second.
let watching = null;
function watch(d) {
  $("claim").hidden = true;
  $("progress").hidden = false;
  $("progress-serial").textContent = d.serial;
  $("progress-site").textContent = d.site;
  const step = (id, done, text) => { const li = $(id); li.dataset.state = done ? "done" : "waiting"; if (text) li.textContent = text; };
  step("step-claimed", true);
  step("step-enrolled", false, "Waiting for the device to enroll (power it on)");
  step("step-applied", false, "Waiting for the device to apply its config");
  const show = (d) => {
    const enrolled = ["provisioned", "active"].includes(d.state);
    if (enrolled) step("step-enrolled", true, "Enrolled" + (d.lease ? ", address " + d.lease.address : ""));
    if (d.state === "active" && d.applied_config_version >= d.config_version)
      step("step-applied", true, "Config applied (version " + d.applied_config_version + ")");
    if (d.state === "revoked") step("step-enrolled", false, "Revoked by an operator");
    return d.state === "active" && d.applied_config_version >= d.config_version;
  };
  clearInterval(watching);
  show(d);
  watching = setInterval(async () => {
    try { if (show(await api("GET", "/api/v1/devices/" + encodeURIComponent(d.serial)))) clearInterval(watching); } catch { /* keep asking */ }
  }, 1000);
}
$("another").addEventListener("click", () => {
  clearInterval(watching);
  $("progress").hidden = true;
  $("claim").hidden = false;
  $("code").focus();
});
