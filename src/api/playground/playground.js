// playground.js: the playground page's behaviour. It calls the gateway's own
// API (same origin, relative URLs) and renders every output as text or as an
// <img>; nothing the user's code produced is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/svg+xml"];
const TOKEN_KEY = "code-interpreter.token";
const USER_KEY = "code-interpreter.user";
let running = false;

/** A random UUID v4 (crypto.randomUUID needs a secure context; this does not). */
function newUserId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const plain = (text) => String(text).replace(ANSI, "");

function setMessage(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

/** Calls the API; resolves to {status, data, retryAfter} (data: parsed JSON or null). */
async function call(method, path, body) {
  const init = { method, headers: { "X-Auth-Token": $("token").value.trim() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    // not JSON: only the status code is known
  }
  return { status: response.status, data, retryAfter: response.headers.get("Retry-After") };
}

/** One sentence a person can act on, for a failed call. */
function explain({ status, data, retryAfter }) {
  const detail = data && data.detail ? data.detail : "";
  switch (status) {
    case 401:
      return "The API token was refused (401). Paste the token that scripts/token.sh prints.";
    case 504:
      return "Timed out (504): the session was reset, so its variables are gone. The next run starts a fresh session.";
    case 502:
      return `The kernel died (502): the session was reset. ${detail}`;
    case 503:
      return `The server is full (503): no worker is free. Try again in ${retryAfter || 5} s.`;
    case 429:
      return "Too many of your requests are already waiting (429). Wait for them to finish.";
    default:
      return `Request failed (${status}): ${detail || "no details"}`;
  }
}

function renderData(data) {
  for (const type of IMAGE_TYPES) {
    if (typeof data[type] !== "string") continue;
    const img = new Image();
    img.alt = plain(data["text/plain"] || "image output");
    img.src = type === "image/svg+xml"
      ? `data:image/svg+xml;charset=utf-8,${encodeURIComponent(data[type])}`
      : `data:${type};base64,${data[type].replace(/\s/g, "")}`;
    return img;
  }
  if ("text/plain" in data) return el("pre", "result", plain(data["text/plain"]));
  // Only rich types (HTML, JSON…): shown as their source text, never rendered.
  const type = Object.keys(data)[0] || "empty";
  const value = typeof data[type] === "string" ? data[type] : JSON.stringify(data[type], null, 2);
  return el("pre", "result", `[${type}]\n${plain(value ?? "")}`);
}

function renderOutput(out) {
  switch (out.type) {
    case "stream":
      return el("pre", out.name === "stderr" ? "stderr" : "stdout", plain(out.text));
    case "error": {
      const text = out.traceback && out.traceback.length
        ? out.traceback.join("\n")
        : `${out.ename}: ${out.evalue}`;
      return el("pre", "error", plain(text));
    }
    default:
      return renderData(out.data || {});
  }
}

/** A new result cell at the top of the history; returns its parts. */
function addCell(code) {
  const cell = el("article", "cell");
  cell.dataset.state = "running";
  const head = el("div", "cell-head");
  const firstLine = code.trim().split("\n")[0];
  const meta = el("span", "meta", "running…");
  head.append(el("code", "", firstLine), meta);
  const body = el("div", "cell-body");
  cell.append(head, body);
  $("history").prepend(cell);
  return { cell, meta, body };
}

function finishCell(parts, r) {
  if (r.status === 200) {
    const d = r.data;
    for (const out of d.outputs) parts.body.append(renderOutput(out));
    if (d.output_truncated) parts.body.append(el("pre", "stderr", "[output truncated by the server]"));
    if (!d.outputs.length) parts.body.append(el("pre", "stdout muted", "(no output)"));
    const fresh = d.session_created ? " · new session" : "";
    parts.meta.textContent = `[${d.execution_count ?? "?"}] ${d.duration_ms} ms${fresh}`;
    parts.cell.dataset.state = d.status === "ok" ? "ok" : "error";
    setMessage("");
  } else {
    const message = explain(r);
    parts.body.append(el("pre", "failure", message));
    parts.meta.textContent = `HTTP ${r.status}`;
    parts.cell.dataset.state = `http-${r.status}`;
    setMessage(message, true);
  }
}

async function run() {
  const code = $("code").value;
  if (running || !code.trim()) return;
  running = true;
  $("run").disabled = true;
  const parts = addCell(code);
  const body = { user_uuid: $("user").value.trim(), code };
  const timeout = parseFloat($("timeout").value);
  if (timeout > 0) body.timeout = timeout;
  setMessage("Running…");
  try {
    finishCell(parts, await call("POST", "execute", body));
  } catch (e) {
    finishCell(parts, { status: 0, data: { detail: `the gateway is unreachable (${e.message})` } });
  } finally {
    running = false;
    $("run").disabled = false;
    refreshStatus();
  }
}

async function release() {
  try {
    const r = await call("POST", "release", { user_uuid: $("user").value.trim() });
    if (r.status === 200) setMessage(`Released: ${r.data.detail}.`);
    else setMessage(explain(r), true);
  } catch (e) {
    setMessage(`The gateway is unreachable (${e.message}).`, true);
  }
  refreshStatus();
}

function newSession() {
  $("user").value = newUserId();
  localStorage.setItem(USER_KEY, $("user").value);
  $("history").replaceChildren();
  setMessage("New user id: the next run starts a fresh session.");
}

async function refreshStatus() {
  const list = $("status");
  const rows = [];
  try {
    const r = await call("GET", "status");
    if (r.status !== 200) {
      rows.push(["status", r.status === 401 ? "needs a valid token" : `HTTP ${r.status}`]);
    } else {
      const s = r.data;
      rows.push(
        ["workers", `${s.total_workers} (${s.busy_workers} busy, ${s.idle_workers_in_pool} idle)`],
        ["sessions", s.sessions],
        ["free slots", `${s.capacity.free_slots} of ${s.capacity.max_workers}`],
        ["timeout", `${s.limits.execution_timeout_secs} s`],
        ["podman", s.podman.version],
        ["cgroup limits", s.host.cgroup_limits_enforced ? "enforced" : "not enforced on this host"],
      );
      if (s.last_worker_error) rows.push(["last worker error", s.last_worker_error]);
    }
  } catch (e) {
    rows.push(["status", `unreachable (${e.message})`]);
  }
  list.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

function init() {
  // scripts/start.sh prints a link with #token=…; keep it, then drop it from the address bar.
  const fromLink = location.hash.match(/^#token=([^&]+)$/);
  if (fromLink) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(fromLink[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("user").value = localStorage.getItem(USER_KEY) || newUserId();
  localStorage.setItem(USER_KEY, $("user").value);

  $("token").addEventListener("change", () => {
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    refreshStatus();
  });
  $("user").addEventListener("change", () => localStorage.setItem(USER_KEY, $("user").value.trim()));
  $("code").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });
  $("run").addEventListener("click", run);
  $("release").addEventListener("click", release);
  $("new-session").addEventListener("click", newSession);
  $("refresh").addEventListener("click", refreshStatus);
  refreshStatus();
}

init();
