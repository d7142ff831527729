// What the lesionsynth pages share (loaded before the page's own script): element lookup, the status
// line, and calls to this service's REST API with the bearer token the person entered.
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

// POST a JSON body; the answer as JSON (or a Blob). An error says the problem's detail (RFC 9457).
async function api(path, body, asBlob = false) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body || {}) });
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try {
      const p = await r.json();
      message = r.status + ": " + (p.detail || p.title || message);
    } catch (e) { /* not JSON */ }
    if (r.status === 401) message += ": enter the bearer token";
    throw new Error(message);
  }
  return asBlob ? r.blob() : r.json();
}
