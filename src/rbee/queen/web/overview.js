// Overview: hives with their host telemetry and GPUs as bars, workers with state, slots and
// tokens/s, live from the queen's overview events (one a second).
import { fill, h, meter, num, table } from "./lib.js";

let events = null;

function gpuMeters(gpu) {
  const used = gpu.vram_used_mb / Math.max(gpu.vram_total_mb, 1);
  return h(
    "div",
    { class: "gpu" },
    h("div", { class: "muted" }, `GPU ${gpu.index}: ${gpu.name}`),
    meter("utilisation", gpu.util_pct / 100, `${num(gpu.util_pct)} %`),
    meter("VRAM", used, `${num(gpu.vram_used_mb / 1024, 1)}/${num(gpu.vram_total_mb / 1024, 1)} GB`),
    meter("power", gpu.power_w == null ? 0 : gpu.power_w / 400, gpu.power_w == null ? "-" : `${num(gpu.power_w)} W`),
    meter("temperature", gpu.temperature_c == null ? 0 : gpu.temperature_c / 100, gpu.temperature_c == null ? "-" : `${num(gpu.temperature_c)} °C`),
  );
}

function hiveCard(hive, workers) {
  const host = hive.host;
  const ramUsed = (host.ram_total_mb - host.ram_free_mb) / Math.max(host.ram_total_mb, 1);
  return h(
    "section",
    { class: "card hive", "aria-label": `hive ${hive.name}`, "data-hive": hive.name },
    h("h3", {}, h("span", {}, hive.name), h("span", { class: `state-${hive.status}` }, hive.status)),
    meter("CPU load", host.load_1m / Math.max(host.cpu_count, 1), `${num(host.load_1m, 2)} / ${host.cpu_count}`),
    meter("RAM", ramUsed, `${num((host.ram_total_mb - host.ram_free_mb) / 1024, 1)}/${num(host.ram_total_mb / 1024, 1)} GB`),
    host.gpus.length ? host.gpus.map(gpuMeters) : h("div", { class: "muted" }, "no GPU"),
    h("div", { class: "muted" }, `${workers} workers · models: ${hive.models.join(", ") || "none"}`),
  );
}

function workerRow(entry, rates) {
  const w = entry.worker;
  const used = w.slots_total - w.slots_free;
  return h(
    "tr",
    { "data-worker": w.id },
    h("td", {}, w.id),
    h("td", {}, entry.hive),
    h("td", {}, w.model),
    h("td", {}, w.device),
    h("td", { class: `state-${w.state}` }, entry.stalled ? `${w.state} (stalled)` : w.state),
    h("td", { class: "num" }, `${used}/${w.slots_total}`),
    h("td", { class: "num" }, num(rates[w.id] ?? 0, 1)),
    h("td", { class: "num" }, `${num(w.cpu_pct)} %`),
    h("td", { class: "num" }, `${num(w.rss_mb)} MB`),
  );
}

function render(root, overview) {
  const s = overview.status;
  const perHive = {};
  for (const entry of s.workers) perHive[entry.hive] = (perHive[entry.hive] ?? 0) + 1;
  const workers = [...s.workers].sort((a, b) => a.worker.id.localeCompare(b.worker.id));
  fill(root,
    h("h1", {}, "Overview"),
    h(
      "p",
      { class: "summary" },
      `policy ${s.policy} · ${s.hives.length} hives · ${s.workers.length} workers · `,
      `${s.running} running · ${s.queue_depth} queued${s.draining ? " · draining" : ""}`,
    ),
    s.last_policy_error ? h("p", { class: "error" }, `last policy error: ${s.last_policy_error}`) : null,
    h("h2", {}, "Hives"),
    s.hives.length ? h("div", { class: "cards" }, s.hives.map((hive) => hiveCard(hive, perHive[hive.name] ?? 0))) : h("p", { class: "muted" }, "No hive has reported yet."),
    h("h2", {}, "Workers"),
    workers.length
      ? table(["worker", "hive", "model", "device", "state", "slots used", "tokens/s", "CPU", "RSS"], workers.map((e) => workerRow(e, overview.tokens_per_s)), "workers")
      : h("p", { class: "muted" }, "No worker is running: a job for a model starts one."),
    s.recent_errors.length ? [h("h2", {}, "Recent errors"), table(["what", "message"], s.recent_errors.slice(-10).map((e) => [e.what, e.message]), "recent errors")] : null,
  );
}

export function start(view) {
  const root = h("div", { id: "overview", "aria-live": "off" }, h("h1", {}, "Overview"), h("p", { class: "muted" }, "Waiting for the queen…"));
  view.append(root);
  events = new EventSource("/v1/ui/events");
  events.onmessage = (event) => render(root, JSON.parse(event.data));
}

export function stop() {
  events?.close();
  events = null;
}
