// The operator console: hash routes #/devices, #/device/{serial},
// #/sites, #/site/{name}, #/audit, #/tokens. Every call goes to the ops API
// with the tab's token; what a role may not do the API refuses (403), and
// the console shows that answer.
import { api, el, clear, signIn, token, setToken, when } from "/ui/common.js";

const $ = (id) => document.getElementById(id);
const view = $("view");
const STATES = ["", "manufactured", "claimed", "provisioned", "active", "revoked"];

function say(text, isError) {
  const s = $("status");
  s.textContent = text || "";
  s.classList.toggle("error", !!isError);
}
function fail(e) { say(e.status === 403 ? "Not allowed for this token: " + e.message : e.message, true); }

async function route() {
  if (!token()) { showSignIn(); return; }
  $("signin").hidden = true;
  $("nav").hidden = false;
  const [, name, arg] = (location.hash || "#/devices").split("/");
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === "#/" + name);
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  say("");
  clear(view);
  try {
    switch (name) {
      case "device": await device(decodeURIComponent(arg)); break;
      case "sites": await sites(); break;
      case "site": await site(decodeURIComponent(arg)); break;
      case "audit": await audit(); break;
      case "tokens": await tokens(); break;
      case "firmware": await firmwareView(); break;
      case "signout": setToken(""); location.hash = "#/devices"; showSignIn(); break;
      default: await devicesView(); break;
    }
  } catch (e) { fail(e); }
}

function showSignIn() {
  $("nav").hidden = true;
  clear(view);
  $("signin").hidden = false;
  $("token").focus();
}

// confirmRevoke opens the confirmation that names every device a
// revocation will cut, and resolves to the reason, or null when cancelled.
function confirmRevoke(what, serials, total) {
  const d = $("confirm");
  $("confirm-h").textContent = "Revoke " + what;
  $("confirm-text").textContent = `This revokes ${total} device${total === 1 ? "" : "s"}: their certificates are revoked, their leases released and their live sessions cut. They cannot enroll again until reopened.`;
  const list = clear($("confirm-list"));
  for (const s of serials.slice(0, 200)) list.append(el("li", {}, s));
  if (total > serials.length || serials.length > 200) list.append(el("li", { class: "muted" }, `… and ${total - Math.min(serials.length, 200)} more`));
  $("confirm-reason").value = "";
  $("confirm-ok").textContent = `Revoke ${total} device${total === 1 ? "" : "s"}`;
  d.showModal();
  return new Promise((ok) => d.addEventListener("close", () => ok(d.returnValue === "ok" ? $("confirm-reason").value.trim() : null), { once: true }));
}

// revoke confirms, revokes, and shows the view again with the outcome.
async function revoke(req, what, serials, total) {
  say("");
  const reason = await confirmRevoke(what, serials, total);
  if (reason === null) { say("Revocation cancelled."); return; }
  const res = await api("POST", "/api/v1/revocations", { ...req, reason });
  await then(`Revoked ${res.revoked} device${res.revoked === 1 ? "" : "s"}.`);
}

// then shows the current view again, and a message about what was done.
async function then(message) { await route(); say(message); }

// everyDevice lists the serials of every device matching a filter.
async function everyDevice(q) {
  const out = [];
  let after = "";
  do {
    const page = await api("GET", "/api/v1/devices?" + new URLSearchParams({ ...q, limit: "500", after }));
    for (const d of page.devices) if (d.state !== "revoked") out.push(d.serial);
    after = page.next || "";
  } while (after && out.length < 100000);
  return out;
}

// ---- devices ----
const filter = { site: "", state: "", model: "", firmware: "", batch: "" };
let pages = [""]; // the cursors of the pages seen, for Previous

async function devicesView() {
  const form = el("form", { class: "row", "aria-label": "Filter devices" },
    ...["site", "model", "firmware", "batch"].map((k) => el("div", {}, el("label", { for: "f-" + k }, k[0].toUpperCase() + k.slice(1)),
      el("input", { id: "f-" + k, name: k, value: filter[k] }))),
    el("div", {}, el("label", { for: "f-state" }, "State"),
      el("select", { id: "f-state", name: "state" }, STATES.map((s) => el("option", { value: s, selected: s === filter.state }, s || "any")))),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    for (const k of Object.keys(filter)) filter[k] = form.elements[k].value.trim();
    pages = [""];
    say("");
    devicesView();
  });
  const after = pages[pages.length - 1];
  const q = Object.fromEntries(Object.entries(filter).filter(([, v]) => v));
  const page = await api("GET", "/api/v1/devices?" + new URLSearchParams({ ...q, limit: "50", after }));
  const rows = page.devices.map((d) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", name: "pick", value: d.serial, "aria-label": "Select " + d.serial, disabled: d.state === "revoked" })),
    el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.serial) }, d.serial)),
    el("td", {}, d.model), el("td", {}, d.site || ""), el("td", {}, d.state),
    el("td", {}, d.lease ? d.lease.address : ""),
    el("td", {}, d.config_version ? `${d.applied_config_version || 0} / ${d.config_version}` : ""),
    el("td", {}, d.firmware_version || ""), el("td", {}, when(d.last_seen))));
  const table = el("table", {},
    el("caption", { class: "sr-only" }, "Devices"),
    el("thead", {}, el("tr", {}, ["", "Serial", "Model", "Site", "State", "Address", "Config applied / desired", "Firmware", "Last seen"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 9 }, "No devices match."))));
  const picked = () => [...view.querySelectorAll("input[name=pick]:checked")].map((c) => c.value);
  const revokeSelected = el("button", { type: "button", class: "danger", onclick: async () => {
    const s = picked();
    if (!s.length) { say("Select devices first.", true); return; }
    try { await revoke({ devices: s }, "selected devices", s, s.length); } catch (e) { fail(e); }
  } }, "Revoke selected");
  const revokeMatching = el("button", { type: "button", class: "danger secondary", onclick: async () => {
    if (!filter.batch && !filter.site) { say("Filter by a batch or a site first: that is what will be revoked.", true); return; }
    try {
      const req = filter.batch ? { batch: filter.batch } : { site: filter.site };
      const s = await everyDevice(req);
      await revoke(req, filter.batch ? "batch " + filter.batch : "every device of site " + filter.site, s, s.length);
    } catch (e) { fail(e); }
  } }, "Revoke whole batch or site…");
  const nav = el("p", { class: "row" },
    el("button", { type: "button", class: "secondary", disabled: pages.length === 1, onclick: () => { pages.pop(); devicesView(); } }, "Previous page"),
    el("button", { type: "button", class: "secondary", disabled: !page.next, onclick: () => { pages.push(page.next); devicesView(); } }, "Next page"),
    revokeSelected, revokeMatching);
  clear(view).append(el("h2", {}, "Devices"), form, table, nav);
}

// ---- one device ----
async function device(ref) {
  const d = await api("GET", "/api/v1/devices/" + encodeURIComponent(ref));
  const dl = (pairs) => el("dl", {}, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "")]));
  const override = d.override || {};
  const ovr = el("form", { "aria-label": "Reconfigure this device" },
    el("div", { class: "row" },
      el("div", {}, el("label", { for: "o-ssid" }, "SSID"), el("input", { id: "o-ssid", name: "ssid", value: override.ssid || "" })),
      el("div", {}, el("label", { for: "o-sec" }, "Security"), el("select", { id: "o-sec", name: "security" },
        ["", "wpa2-psk", "wpa3-sae", "open"].map((s) => el("option", { value: s, selected: s === (override.security || "") }, s || "site's")))),
      el("div", {}, el("label", { for: "o-pass" }, "Passphrase"), el("input", { id: "o-pass", name: "passphrase", type: "password", autocomplete: "new-password", placeholder: "unchanged" }))),
    el("p", { class: "row" }, el("button", { type: "submit" }, "Apply override"),
      el("button", { type: "button", class: "secondary", onclick: async () => {
        try { await api("PATCH", "/api/v1/devices/config", { devices: [d.serial], clear: true }); await then("Override cleared."); } catch (e) { fail(e); }
      } }, "Clear override")));
  ovr.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const o = {};
    for (const k of ["ssid", "security", "passphrase"]) if (ovr.elements[k].value) o[k] = ovr.elements[k].value;
    try { const r = await api("PATCH", "/api/v1/devices/config", { devices: [d.serial], override: o }); await then(`Reconfigured: ${r.pushed} config pushed.`); } catch (e) { fail(e); }
  });
  const actions = el("p", { class: "row" },
    d.state !== "revoked" && el("button", { type: "button", class: "danger", onclick: async () => {
      try { await revoke({ devices: [d.serial] }, "device " + d.serial, [`${d.serial} (${d.id})`], 1); } catch (e) { fail(e); }
    } }, "Revoke device"),
    d.state === "revoked" && el("button", { type: "button", onclick: async () => {
      try { const r = await api("POST", `/api/v1/devices/${encodeURIComponent(d.serial)}/reopen`); await then("Reopened. New claim token (flash it to the device): " + r.claim_token); } catch (e) { fail(e); }
    } }, "Reopen for re-provisioning"));
  const history = el("table", {}, el("caption", {}, "History"),
    el("thead", {}, el("tr", {}, ["Time", "Action", "By", "From", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, (d.history || []).slice().reverse().map((e) => el("tr", {}, el("td", {}, when(e.time)), el("td", {}, e.action), el("td", {}, e.actor), el("td", {}, e.source || ""),
      el("td", {}, Object.entries(e.detail || {}).map(([k, v]) => `${k}=${v}`).join(" "))))));
  clear(view).append(
    el("h2", {}, "Device " + d.serial),
    el("h3", {}, "Identity"),
    dl([["ID", d.id], ["Serial", d.serial], ["Model", d.model], ["Batch", d.batch_id], ["Site", d.site], ["State", d.state], ["Health", d.health], ["Firmware", d.firmware_version], ["Last seen", when(d.last_seen)], ["Provisioned", when(d.provisioned_at)]]),
    el("h3", {}, "Certificate"),
    dl([["Serial", d.cert_serial], ["Expires", when(d.cert_not_after)]]),
    d.certificate && el("details", {}, el("summary", {}, "PEM"), el("pre", {}, d.certificate)),
    el("h3", {}, "Lease"),
    dl([["Address", d.lease && d.lease.address], ["Expires", d.lease && when(d.lease.expires)]]),
    el("h3", {}, "Config"),
    dl([["Desired version", d.config_version], ["Applied version", d.applied_config_version || 0],
      ["Converged", d.config_version && d.applied_config_version >= d.config_version ? "yes" : "no"],
      ["Override", Object.entries(override).map(([k, v]) => `${k}=${v}`).join(", ") || "none (site profile)"]]),
    d.state !== "revoked" && ovr,
    actions, history);
}

// ---- sites ----
async function sites() {
  const list = (await api("GET", "/api/v1/sites")).sites || [];
  const meter = (n, of) => el("span", { class: "meter", role: "img", "aria-label": `${n} of ${of}` }, el("span", { style: null, "data-w": of ? Math.round(100 * n / of) : 0 }));
  const rows = list.map((s) => el("tr", {},
    el("td", {}, el("a", { href: "#/site/" + encodeURIComponent(s.name) }, s.name)), el("td", {}, s.ssid), el("td", {}, s.cidr),
    el("td", {}, `${s.devices}`), el("td", {}, `${s.enrolled}`),
    el("td", {}, meter(s.config_applied, s.enrolled), ` ${s.config_applied} / ${s.enrolled}`),
    el("td", {}, `${s.leases_in_use} / ${s.pool_size}`), el("td", {}, `${s.version}`)));
  clear(view).append(el("h2", {}, "Sites"), el("table", {},
    el("caption", { class: "sr-only" }, "Sites"),
    el("thead", {}, el("tr", {}, ["Site", "SSID", "Network", "Devices", "Enrolled", "Config applied", "Leases", "Profile version"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows)));
  sizeMeters();
}
// Meters are sized here, not with inline styles (the page's policy refuses those).
function sizeMeters() { for (const m of view.querySelectorAll(".meter > span")) m.style.width = m.dataset.w + "%"; }

async function site(name) {
  const s = await api("GET", "/api/v1/sites/" + encodeURIComponent(name));
  const field = (k, label, v, type) => el("div", {}, el("label", { for: "s-" + k }, label), el("input", { id: "s-" + k, name: k, value: v ?? "", type: type || "text", autocomplete: type === "password" ? "new-password" : "off" }));
  const form = el("form", { "aria-label": "Site profile" },
    el("div", { class: "row" }, field("ssid", "SSID", s.ssid),
      el("div", {}, el("label", { for: "s-security" }, "Security"), el("select", { id: "s-security", name: "security" }, ["wpa2-psk", "wpa3-sae", "open"].map((x) => el("option", { value: x, selected: x === s.security }, x)))),
      field("passphrase", "Passphrase", "", "password")),
    el("div", { class: "row" }, field("dns", "DNS (comma-separated)", (s.dns || []).join(", ")), field("ntp", "NTP (comma-separated)", (s.ntp || []).join(", ")), field("lease", "Lease", s.lease)),
    el("p", { class: "row" }, el("button", { type: "submit" }, "Save and push to the site's devices"),
      el("button", { type: "button", class: "danger secondary", onclick: async () => {
        try { const all = await everyDevice({ site: name }); await revoke({ site: name }, "every device of site " + name, all, all.length); } catch (e) { fail(e); }
      } }, "Revoke every device of the site…")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    const req = { ssid: f.ssid.value, security: f.security.value, lease: f.lease.value,
      dns: f.dns.value.split(",").map((x) => x.trim()).filter(Boolean), ntp: f.ntp.value.split(",").map((x) => x.trim()).filter(Boolean) };
    if (f.passphrase.value) req.passphrase = f.passphrase.value;
    try { const v = await api("PATCH", "/api/v1/sites/" + encodeURIComponent(name), req); await then(`Saved: profile version ${v.version}, pushed to ${v.enrolled} enrolled devices.`); } catch (e) { fail(e); }
  });
  const pct = s.enrolled ? Math.round(100 * s.config_applied / s.enrolled) : 100;
  clear(view).append(el("h2", {}, "Site " + s.name),
    el("dl", {}, el("dt", {}, "Convergence"), el("dd", {}, el("span", { class: "meter", role: "img", "aria-label": pct + "%" }, el("span", { "data-w": pct })), ` ${s.config_applied} of ${s.enrolled} enrolled devices run profile version ${s.version} (${pct}%)`),
      el("dt", {}, "Devices"), el("dd", {}, el("a", { href: "#/devices", onclick: () => { Object.assign(filter, { site: name, state: "", model: "", firmware: "", batch: "" }); pages = [""]; } }, `${s.devices} devices`)),
      el("dt", {}, "Network"), el("dd", {}, `${s.cidr}, gateway ${s.gateway}, ${s.leases_in_use} of ${s.pool_size} addresses leased`),
      el("dt", {}, "Passphrase"), el("dd", {}, s.passphrase_set ? "set (never shown)" : "none")),
    el("h3", {}, "Profile"), form);
  sizeMeters();
}

// ---- audit ----
// Newest first, 100 at a time; "Older events" pages back with the cursor
// the API hands out.
async function audit(before) {
  const head = await api("GET", "/api/v1/audit/verify");
  const page = await api("GET", "/api/v1/audit?" + new URLSearchParams({ before: before || "", limit: "100" }));
  const evs = page.events || [];
  const older = page.next ? el("button", { type: "button", class: "secondary", onclick: () => audit(page.next).catch(fail) }, "Older events") : "";
  clear(view).append(el("h2", {}, "Audit log"),
    el("p", {}, `${head.events} events in ${head.chains} hash chains; every chain verifies (head ${String(head.hash || "").slice(0, 16)}…). Newest first:`),
    el("table", {}, el("caption", { class: "sr-only" }, "Audit events"),
      el("thead", {}, el("tr", {}, ["Time", "Action", "Target", "By", "From", "Detail"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, evs.map((e) => el("tr", {}, el("td", {}, when(e.time)), el("td", {}, e.action), el("td", {}, e.target), el("td", {}, e.actor), el("td", {}, e.source || ""),
        el("td", {}, Object.entries(e.detail || {}).map(([k, v]) => `${k}=${v}`).join(" ")))))),
    older);
}

// ---- firmware ----
async function firmwareView() {
  const fw = await api("GET", "/api/v1/firmware");
  const images = el("table", {}, el("caption", {}, "Images"),
    el("thead", {}, el("tr", {}, ["Model", "Version", "Size", "SHA-256", "Minimum bootloader", "Added", "Notes"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, (fw.images || []).map((m) => el("tr", {}, el("td", {}, m.model), el("td", {}, m.version), el("td", {}, `${m.size} bytes`),
      el("td", {}, el("code", {}, m.sha256.slice(0, 16) + "…")), el("td", {}, m.min_bootloader || ""), el("td", {}, when(m.created)), el("td", {}, m.notes || "")))));
  const state = (r, s, label) => el("button", { type: "button", class: s === "aborted" ? "danger secondary" : "secondary", disabled: r.state === s || r.state === "aborted", onclick: async () => {
    if (s === "aborted" && !window.confirm(`Abort the rollout of ${r.model} ${r.version}${r.site ? " at " + r.site : ""}? Every device goes back to ${r.previous || "no target"}.`)) return;
    try { await api("POST", "/api/v1/firmware/rollouts/state", { model: r.model, site: r.site || "", state: s }); await then(`Rollout of ${r.model} ${r.version}: ${s}.`); } catch (e) { fail(e); }
  } }, label);
  const rows = (fw.rollouts || []).map((r) => {
    const reported = Object.entries(r.reported || {}).map(([v, n]) => `${v || "unreported"}: ${n}`).join(", ");
    return el("tr", { "data-rollout": `${r.model}@${r.site || "*"}` },
      el("td", {}, r.model), el("td", {}, r.site || "every site"), el("td", {}, r.version), el("td", {}, r.previous || ""),
      el("td", {}, `${r.percent}%`), el("td", {}, r.state),
      el("td", {}, el("span", { class: "meter", role: "img", "aria-label": `${r.on_version} of ${r.devices}` }, el("span", { "data-w": r.devices ? Math.round(100 * r.on_version / r.devices) : 0 })),
        ` ${r.on_version} of ${r.devices} on ${r.version}`),
      el("td", { class: r.unhealthy ? "error" : "" }, String(r.unhealthy)),
      el("td", {}, reported),
      el("td", {}, state(r, "paused", "Pause"), " ", state(r, "active", "Resume"), " ", state(r, "aborted", "Abort")));
  });
  const form = el("form", { class: "row", "aria-label": "Roll out a version" },
    ...[["model", "Model"], ["site", "Site (empty: every site)"], ["version", "Version"], ["percent", "Percent"]].map(([k, label]) =>
      el("div", {}, el("label", { for: "r-" + k }, label), el("input", { id: "r-" + k, name: k, value: k === "percent" ? "10" : "", required: k !== "site" }))),
    el("button", { type: "submit" }, "Roll out"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const r = await api("PUT", "/api/v1/firmware/rollouts", { model: f.model.value.trim(), site: f.site.value.trim(), version: f.version.value.trim(), percent: Number(f.percent.value) });
      await then(`Rolling out ${r.model} ${r.version} to ${r.percent}%.`);
    } catch (e) { fail(e); }
  });
  clear(view).append(el("h2", {}, "Firmware"),
    el("table", {}, el("caption", {}, "Rollouts: devices by the version they report; unhealthy counts devices that report a problem, such as an image they refused"),
      el("thead", {}, el("tr", {}, ["Model", "Site", "Target", "Others on", "Share", "State", "Progress", "Unhealthy", "Reported versions", ""].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 10 }, "No rollouts.")))),
    el("h3", {}, "Roll out a version"), form, images,
    el("p", { class: "muted" }, "Add images with provctl firmware add FILE --model M --version V."));
  sizeMeters();
}

// ---- tokens (admin) ----
async function tokens() {
  const list = (await api("GET", "/api/v1/tokens")).tokens || [];
  const form = el("form", { class: "row", "aria-label": "New token" },
    el("div", {}, el("label", { for: "t-name" }, "Name"), el("input", { id: "t-name", name: "name", required: true })),
    el("div", {}, el("label", { for: "t-role" }, "Role"), el("select", { id: "t-role", name: "role" }, ["viewer", "installer", "operator", "admin", "radius"].map((r) => el("option", { value: r }, r)))),
    el("div", {}, el("label", { for: "t-sites" }, "Sites (comma-separated; empty: all)"), el("input", { id: "t-sites", name: "sites" })),
    el("button", { type: "submit" }, "Create token"));
  const secret = el("p", { class: "status", role: "status" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = form.elements;
    try {
      const t = await api("POST", "/api/v1/tokens", { name: f.name.value, role: f.role.value, sites: f.sites.value.split(",").map((x) => x.trim()).filter(Boolean) });
      await tokens();
      view.querySelector(".status").textContent = `Token ${t.id} created. Its secret is shown once: ${t.token}`;
    } catch (e) { fail(e); }
  });
  const rows = list.map((t) => el("tr", {}, el("td", {}, t.id), el("td", {}, t.name), el("td", {}, t.role), el("td", {}, (t.sites || []).join(", ") || "all"), el("td", {}, when(t.created_at)),
    el("td", {}, el("button", { type: "button", class: "danger secondary", onclick: async () => {
      if (!window.confirm(`Delete token ${t.name} (${t.id})? Whoever holds it loses access at once.`)) return;
      try { await api("DELETE", "/api/v1/tokens/" + encodeURIComponent(t.id)); tokens(); } catch (e) { fail(e); }
    } }, "Delete"))));
  clear(view).append(el("h2", {}, "Tokens"), form, secret, el("table", {}, el("caption", { class: "sr-only" }, "Tokens"),
    el("thead", {}, el("tr", {}, ["ID", "Name", "Role", "Sites", "Created", ""].map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)));
}

// After signing in, show what the address asks for, except the sign-out it
// may still name (which would sign the new token out at once).
signIn($("signin-form"), $("signin-status"), () => {
  if (location.hash === "#/signout") location.hash = "#/devices"; // hashchange routes
  else route();
});
window.addEventListener("hashchange", route);
route();
