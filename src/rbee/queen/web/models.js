// Models: what each hive has; pull one from the queen's store with progress.
import { api, bytes, fill, h, stream, table } from "./lib.js";

let controller = null;

async function hiveModels(hive) {
  if (hive.status !== "online") return h("p", { class: "muted" }, "offline");
  try {
    const list = await api(`/v1/hives/${encodeURIComponent(hive.name)}/models`);
    return list.models.length
      ? table(["model", "architecture", "context", "precisions", "size"], list.models.map((m) => [m.name, m.architecture, String(m.context_length), m.precisions.join(", "), bytes(m.size_bytes)]), `models on ${hive.name}`)
      : h("p", { class: "muted" }, "no model");
  } catch (err) {
    return h("p", { class: "error" }, err.message);
  }
}

function progressText(event) {
  if (event.type === "progress") return [`${event.file}: ${bytes(event.done)} of ${bytes(event.total)}`, event.done / Math.max(event.total, 1)];
  if (event.type === "import") return [`${event.file}: converting, step ${event.step} of ${event.steps}`, event.step / Math.max(event.steps, 1)];
  return [`pulled ${event.name}: ${bytes(event.size_bytes)} (${bytes(event.downloaded_bytes)} downloaded)`, 1];
}

async function pull(hive, model, out, refresh, path = null) {
  const bar = h("progress", { max: 1, value: 0, "aria-label": "pull progress" });
  const text = h("span", { role: "status" }, "starting…");
  fill(out, bar, " ", text);
  controller = new AbortController();
  try {
    const [url, body] = path === null ? ["pull", { model }] : ["import", { name: model, path }];
    await stream(`/v1/hives/${encodeURIComponent(hive)}/models/${url}`, body, (data) => {
      if (data === "[DONE]") return;
      if (data.startsWith("[ERROR]")) throw new Error(data.slice(8));
      const [line, fraction] = progressText(JSON.parse(data));
      text.textContent = line;
      bar.value = fraction;
    }, { signal: controller.signal });
    refresh();
  } catch (err) {
    fill(text, h("span", { class: "error" }, err.message));
  }
}

function importForm(hives, root) {
  const hive = h("select", { id: "import-hive" }, hives.filter((x) => x.status === "online").map((x) => h("option", { value: x.name }, x.name)));
  const path = h("input", { id: "import-path", required: true, size: 48, placeholder: "/path/on/that/host/model.gguf" });
  const name = h("input", { id: "import-name", required: true, placeholder: "name in the store" });
  const out = h("div", { id: "import-out" });
  return h(
    "div",
    {},
    h(
      "form",
      { class: "row", onsubmit: (event) => { event.preventDefault(); pull(hive.value, name.value, out, () => render(root), path.value); } },
      h("div", {}, h("label", { for: "import-hive" }, "hive"), hive),
      h("div", {}, h("label", { for: "import-path" }, "GGUF file"), path),
      h("div", {}, h("label", { for: "import-name" }, "name"), name),
      h("button", { type: "submit", id: "import-start" }, "Import"),
    ),
    out,
  );
}

async function render(root) {
  const { hives } = await api("/v1/hives");
  const sections = await Promise.all(hives.map(async (hive) => h("section", { class: "card", "aria-label": `hive ${hive.name}` }, h("h3", {}, hive.name), await hiveModels(hive))));
  const hiveSelect = h("select", { id: "pull-hive" }, hives.filter((x) => x.status === "online").map((x) => h("option", { value: x.name }, x.name)));
  const model = h("input", { id: "pull-model", required: true, placeholder: "model name in the queen's store" });
  const out = h("div", { id: "pull-out" });
  fill(root,
    hives.length ? h("div", { class: "cards" }, sections) : h("p", { class: "muted" }, "No hive has reported yet."),
    h("h2", {}, "Pull a model from the queen's store"),
    h(
      "form",
      { class: "row", onsubmit: (event) => { event.preventDefault(); pull(hiveSelect.value, model.value, out, () => render(root)); } },
      h("div", {}, h("label", { for: "pull-hive" }, "hive"), hiveSelect),
      h("div", {}, h("label", { for: "pull-model" }, "model"), model),
      h("button", { type: "submit" }, "Pull"),
    ),
    out,
    h("h2", {}, "Import a GGUF file on a hive's host"),
    importForm(hives, root),
  );
}

export function start(view) {
  const root = h("div", { id: "models" });
  view.append(h("h1", {}, "Models"), root);
  render(root).catch((err) => fill(root, h("p", { class: "error" }, err.message)));
}

export function stop() {
  controller?.abort();
}
