// playground.js: the playground page's behaviour. It calls the gateway's own
// API (same origin, relative URLs), shows each output as the stream of
// /execute/stream delivers it, as text or as an <img>, and moves files in and
// out of the session. Nothing the user's code produced is ever parsed as HTML,
// and the token only ever travels in the X-Auth-Token header.
"use strict";

const $ = (id) => document.getElementById(id);
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;
const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/svg+xml"];
const TOKEN_KEY = "code-interpreter.token";
const USER_KEY = "code-interpreter.user";
let running = null; // the AbortController of the run in progress

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

const token = () => $("token").value.trim();
const user = () => $("user").value.trim();

/** Calls the API; resolves to {status, data, retryAfter} (data: parsed JSON or null). */
async function call(method, path, body) {
  const init = { method, headers: { "X-Auth-Token": token() } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return answer(await fetch(path, init));
}

/** A response as {status, data, retryAfter}. */
async function answer(response) {
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    // not JSON: only the status code is known
  }
  return { status: response.status, data, retryAfter: response.headers.get("Retry-After") };
}

/** Reads a server-sent event stream, calling onEvent(name, data) for each event. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
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

/** Adds one output to a cell; consecutive text of one stream joins one block. */
function appendOutput(body, out) {
  const last = body.lastElementChild;
  if (out.type === "stream" && last && last.dataset.stream === out.name) {
    last.textContent += plain(out.text);
    return;
  }
  const node = renderOutput(out);
  if (out.type === "stream") node.dataset.stream = out.name;
  body.append(node);
}

/** The run ended normally: `d` is what /execute answers. */
function finishCell(parts, d) {
  if (d.output_truncated) parts.body.append(el("pre", "stderr", "[output truncated by the server]"));
  if (!d.outputs.length) parts.body.append(el("pre", "stdout muted", "(no output)"));
  const fresh = d.session_created ? " · new session" : "";
  parts.meta.textContent = `[${d.execution_count ?? "?"}] ${d.duration_ms} ms${fresh}`;
  parts.cell.dataset.state = d.status === "ok" ? "ok" : "error";
  setMessage("");
}

/** The run failed: `r` is {status, data, retryAfter}, as for an HTTP error. */
function failCell(parts, r) {
  const message = explain(r);
  parts.body.append(el("pre", "failure", message));
  parts.meta.textContent = r.status ? `HTTP ${r.status}` : "failed";
  parts.cell.dataset.state = `http-${r.status}`;
  setMessage(message, true);
}

/** Runs the editor's code, showing each output as the stream delivers it. */
async function run() {
  const code = $("code").value;
  if (running || !code.trim()) return;
  running = new AbortController();
  $("run").disabled = true;
  $("stop").disabled = false;
  const parts = addCell(code);
  const body = { user_uuid: user(), code };
  const timeout = parseFloat($("timeout").value);
  if (timeout > 0) body.timeout = timeout;
  setMessage("Running…");
  let ended = false;
  try {
    const response = await fetch("execute/stream", {
      method: "POST",
      headers: { "X-Auth-Token": token(), "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: running.signal,
    });
    if (!response.ok) {
      // Refused before the code ran (401, 400, 413…): a plain JSON error.
      ended = true;
      failCell(parts, await answer(response));
      return;
    }
    await readEvents(response, (name, data) => {
      if (name === "done") {
        ended = true;
        finishCell(parts, data);
      } else if (name === "failed") {
        ended = true;
        failCell(parts, { status: data.status_code, data });
      } else {
        appendOutput(parts.body, data);
      }
    });
    if (!ended) failCell(parts, { status: 0, data: { detail: "the connection closed before the run finished" } });
  } catch (e) {
    if (e.name === "AbortError") {
      parts.body.append(el("pre", "failure", "Stopped: the kernel was interrupted; the session keeps its variables."));
      parts.meta.textContent = "stopped";
      parts.cell.dataset.state = "stopped";
      setMessage("Stopped.");
    } else if (!ended) {
      failCell(parts, { status: 0, data: { detail: `the gateway is unreachable (${e.message})` } });
    }
  } finally {
    running = null;
    $("run").disabled = false;
    $("stop").disabled = true;
    refreshStatus();
    refreshFiles();
  }
}

/** Closing the stream makes the gateway interrupt the kernel. */
function stop() {
  if (running) running.abort();
}

async function release() {
  try {
    const r = await call("POST", "release", { user_uuid: user() });
    if (r.status === 200) setMessage(`Released: ${r.data.detail}.`);
    else setMessage(explain(r), true);
  } catch (e) {
    setMessage(`The gateway is unreachable (${e.message}).`, true);
  }
  refreshStatus();
  refreshFiles();
}

function newSession() {
  $("user").value = newUserId();
  localStorage.setItem(USER_KEY, $("user").value);
  $("history").replaceChildren();
  setMessage("New user id: the next run starts a fresh session.");
  refreshFiles();
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
        ["cgroup limits", s.limits.cgroup_limits_enforced ? "enforced" : "not enforced on this host"],
      );
      if (s.last_worker_error) rows.push(["last worker error", s.last_worker_error]);
    }
  } catch (e) {
    rows.push(["status", `unreachable (${e.message})`]);
  }
  list.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", String(v))]));
}

/** `files/<path>?user_uuid=<user>`, each path component percent-encoded. */
function fileUrl(path) {
  const encoded = path ? `/${path.split("/").map(encodeURIComponent).join("/")}` : "";
  return `files${encoded}?user_uuid=${encodeURIComponent(user())}`;
}

function fileNote(text, isError = false) {
  $("files-note").textContent = text;
  $("files-note").className = isError ? "note error" : "note";
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function button(text, label, onClick) {
  const node = el("button", "", text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

/** Lists the session's files, each with Download and Delete buttons. */
async function refreshFiles() {
  const list = $("files");
  if (!token()) {
    list.replaceChildren();
    fileNote("Enter the token to see the session's files.");
    return;
  }
  let r;
  try {
    r = await call("GET", fileUrl(""));
  } catch (e) {
    fileNote(`The gateway is unreachable (${e.message}).`, true);
    return;
  }
  if (r.status === 404) {
    list.replaceChildren();
    fileNote("No session yet: run code or upload a file to start one.");
    return;
  }
  if (r.status !== 200) {
    fileNote(explain(r), true);
    return;
  }
  list.replaceChildren(...r.data.files.map((file) => {
    const item = el("li");
    item.append(
      el("code", "name", file.name),
      el("span", "size", formatSize(file.size)),
      button("Download", `Download ${file.name}`, () => downloadFile(file.name)),
      button("Delete", `Delete ${file.name}`, () => deleteFile(file.name)),
    );
    return item;
  }));
  fileNote(r.data.files.length ? "" : "No files yet.");
}

/** Uploads the chosen file into the work directory under its own name. */
async function uploadFile() {
  const input = $("upload");
  const file = input.files[0];
  if (!file) return;
  fileNote(`Uploading ${file.name}…`);
  try {
    const r = await answer(await fetch(fileUrl(file.name), {
      method: "PUT",
      headers: { "X-Auth-Token": token(), "Content-Type": "application/octet-stream" },
      body: file,
    }));
    if (r.status !== 200) {
      fileNote(explain(r), true);
      return;
    }
    input.value = "";
    await refreshFiles();
    fileNote(`Uploaded ${r.data.path} (${formatSize(r.data.size)}): code opens it by that name.`);
  } catch (e) {
    fileNote(`The gateway is unreachable (${e.message}).`, true);
  }
}

/** Fetches a file with the token header and saves it through a Blob URL. */
async function downloadFile(path) {
  try {
    const response = await fetch(fileUrl(path), { headers: { "X-Auth-Token": token() } });
    if (!response.ok) {
      fileNote(explain(await answer(response)), true);
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = el("a");
    link.href = url;
    link.download = path.split("/").pop();
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    fileNote(`Downloaded ${path}.`);
  } catch (e) {
    fileNote(`The gateway is unreachable (${e.message}).`, true);
  }
}

async function deleteFile(path) {
  try {
    const r = await call("DELETE", fileUrl(path));
    if (r.status !== 200) {
      fileNote(explain(r), true);
      return;
    }
    await refreshFiles();
    fileNote(`Deleted ${path}.`);
  } catch (e) {
    fileNote(`The gateway is unreachable (${e.message}).`, true);
  }
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
    localStorage.setItem(TOKEN_KEY, token());
    refreshStatus();
    refreshFiles();
  });
  $("user").addEventListener("change", () => {
    localStorage.setItem(USER_KEY, user());
    refreshFiles();
  });
  $("code").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", stop);
  $("upload").addEventListener("change", uploadFile);
  $("refresh-files").addEventListener("click", refreshFiles);
  $("release").addEventListener("click", release);
  $("new-session").addEventListener("click", newSession);
  $("refresh").addEventListener("click", refreshStatus);
  refreshStatus();
  refreshFiles();
}

init();
