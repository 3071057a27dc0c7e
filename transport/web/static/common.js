// Shared by the installer page and the console: the API client, the token
// kept for this tab, and a small DOM builder that never parses data as HTML.

const KEY = "provisiond.token";

export function token() { return sessionStorage.getItem(KEY) || ""; }
export function setToken(t) { t ? sessionStorage.setItem(KEY, t) : sessionStorage.removeItem(KEY); }

export class APIError extends Error {
  constructor(status, code, message) { super(message || code || ("HTTP " + status)); this.status = status; this.code = code; }
}

// api calls the ops API with the tab's token and returns the decoded JSON.
export async function api(method, path, body, contentType) {
  const opts = { method, headers: { "Authorization": "Bearer " + token() } };
  if (body !== undefined) {
    if (contentType) { opts.body = body; opts.headers["Content-Type"] = contentType; }
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  const resp = await fetch(path, opts);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const e = data && data.error ? data.error : {};
    throw new APIError(resp.status, e.code, e.message || text);
  }
  return data;
}

// el builds an element: el("td", {class: "x"}, "text", child, ...). Strings
// become text nodes; attributes starting with "on" are listeners.
export function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (v === true) n.setAttribute(k, "");
    else n.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

export function clear(n) { while (n.firstChild) n.removeChild(n.firstChild); return n; }

export function when(t) { return t ? new Date(t).toLocaleString() : ""; }

// signIn wires a sign-in form: on submit it checks the token against the API
// (GET /api/v1/info) and calls done(info).
export function signIn(form, status, done) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = form.querySelector("input[name=token]");
    setToken(input.value.trim());
    try {
      const info = await api("GET", "/api/v1/info");
      input.value = "";
      done(info);
    } catch (e) {
      setToken("");
      status.textContent = e.status === 401 ? "That token is not valid." : "Sign-in failed: " + e.message;
    }
  });
}
