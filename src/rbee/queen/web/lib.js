// Helpers every page uses: the queen's API, server-sent events over fetch, and building elements.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let onUnauthorized = () => {};

/** Call `handler` when the queen answers 401 (the page then asks for a key). */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body.error?.message ?? message;
  } catch {
    // Not JSON: the status line says it.
  }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, message);
}

function init(method, body, signal) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    signal,
  };
}

/** The queen's JSON answer to `method path` (with a JSON `body`); ApiError on a refusal. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const response = await fetch(path, init(method, body, signal));
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

/** POST `body` to `path` and call `onData` with each SSE `data:` payload until the stream ends. */
export async function stream(path, body, onData, { signal, method = "POST" } = {}) {
  const request = init(method, body, signal);
  request.headers.Accept = "text/event-stream";
  const response = await fetch(path, request);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) onData(data);
    }
  }
}

/** Replace `el`'s children: nodes, texts, arrays of them; null, undefined and false are left out. */
export function fill(el, ...children) {
  el.replaceChildren(
    ...children
      .flat(Infinity)
      .filter((child) => child !== undefined && child !== null && child !== false)
      .map((child) => (child instanceof Node ? child : document.createTextNode(String(child)))),
  );
  return el;
}

/** An element: `h("td", {class: "num"}, "3")`; attributes starting with "on" are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  return fill(el, children);
}

/** A number with `digits` decimals, or "-" for none. */
export function num(value, digits = 0) {
  return value === undefined || value === null ? "-" : Number(value).toFixed(digits);
}

export function ms(value) {
  return value === undefined || value === null ? "-" : `${Number(value).toFixed(0)} ms`;
}

export function ago(epochSeconds) {
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

export function bytes(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e3).toFixed(0)} kB`;
}

/** A labelled meter: `name`, a bar filled `fraction` (0..1), and `text` at its right. */
export function meter(name, fraction, text) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  const fill = h("span");
  // Through the CSSOM: the page's CSP forbids style attributes.
  fill.style.width = `${pct.toFixed(1)}%`;
  return h(
    "div",
    { class: "meter" },
    h("span", {}, name),
    h(
      "div",
      { class: "bar", role: "meter", "aria-label": name, "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct.toFixed(0) },
      fill,
    ),
    h("span", { class: "val" }, text),
  );
}

/** A table with `columns` (header texts) and `rows` (arrays of cells or `<tr>` elements). */
export function table(columns, rows, label) {
  return h(
    "table",
    { "aria-label": label },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => (c instanceof Node ? c : h("td", {}, c))))))),
  );
}

/** The models the queen's workers serve now (`/v1/models`). */
export async function servedModels() {
  const listed = await api("/v1/models");
  return listed.data.map((m) => m.id);
}
