// Logs: the tail of a worker's log (read again every second) or of a hive started over SSH
// (followed as the hive writes it).
import { api, fill, h, stream } from "./lib.js";

const FOLLOW_MS = 1000;
let timer = null;
let controller = null;

function halt() {
  clearTimeout(timer);
  controller?.abort();
}

function show(pre, lines) {
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = lines.join("\n");
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

function followWorker(id, pre, status) {
  const tick = async () => {
    try {
      const log = await api(`/v1/workers/${encodeURIComponent(id)}/log`);
      show(pre, log.lines);
      status.textContent = `worker ${id} · ${log.path}`;
      timer = setTimeout(tick, FOLLOW_MS);
    } catch (err) {
      fill(status, h("span", { class: "error" }, err.message));
    }
  };
  tick();
}

async function followHive(name, pre, status) {
  controller = new AbortController();
  const lines = [];
  status.textContent = `hive ${name} · following`;
  try {
    await stream(`/v1/hives/${encodeURIComponent(name)}/logs?lines=200&follow=1`, undefined, (data) => {
      if (data === "[DONE]") return;
      if (data.startsWith("[ERROR]")) throw new Error(data.slice(8));
      lines.push(...JSON.parse(data).lines);
      show(pre, lines.slice(-2000));
    }, { signal: controller.signal, method: "GET" });
  } catch (err) {
    if (err.name !== "AbortError") fill(status, h("span", { class: "error" }, err.message));
  }
}

export async function start(view) {
  const [{ workers }, { hives }] = await Promise.all([api("/v1/workers"), api("/v1/hives")]);
  const select = h(
    "select",
    { id: "log-source" },
    h("optgroup", { label: "workers" }, workers.map((e) => h("option", { value: `worker:${e.worker.id}` }, `${e.worker.id} (${e.worker.model} on ${e.hive})`))),
    h("optgroup", { label: "hives started over SSH" }, hives.map((x) => h("option", { value: `hive:${x.name}` }, x.name))),
  );
  const pre = h("pre", { class: "log", id: "log-text", tabindex: 0, "aria-label": "log" });
  const status = h("p", { class: "muted", id: "log-status", role: "status" });
  const open = () => {
    halt();
    pre.textContent = "";
    const [kind, name] = select.value.split(/:(.*)/s);
    if (kind === "worker") followWorker(name, pre, status);
    else if (kind === "hive") followHive(name, pre, status);
  };
  select.addEventListener("change", open);
  view.append(
    h("h1", {}, "Logs"),
    h("div", { class: "row" }, h("div", {}, h("label", { for: "log-source" }, "log of"), select)),
    status,
    pre,
  );
  if (workers.length) open();
  else status.textContent = "No worker is running; choose a hive started over SSH, if any.";
}

export function stop() {
  halt();
}
