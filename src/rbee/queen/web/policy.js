// Policy: an editor that checks the draft as you type (the error shown on its line), a preview
// of the draft against the live cluster on sample jobs, a replay of the last decisions, apply.
import { api, fill, h, table } from "./lib.js";

const STARTER = `// A draft: route to the least-loaded worker with the model, else start one.
fn schedule_job(job, workers, hives) {
    let serving = workers.with_model(job.model);
    let free = serving.available();
    if !free.is_empty() {
        return free.least_loaded();
    }
    if !serving.is_empty() {
        return queue("every worker for " + job.model + " is busy");
    }
    if hives.is_empty() {
        return reject("no worker serves " + job.model + " and no hive is online");
    }
    return spawn(hives.least_loaded(), job.model);
}
`;

const YAML_STARTER = `# YAML rules: the first rule whose condition holds decides; default decides the rest.
rules:
  - name: batch jobs wait for a free worker
    condition:
      priority: batch
    action:
      route:
        if_none:
          queue: "batch jobs wait for a free worker"
default:
  route:
    if_none: spawn
`;

const SAMPLE_JOBS = `[
  {"id": "sample-1", "model": "smollm2-135m-instruct"},
  {"id": "sample-2", "model": "smollm2-135m-instruct", "priority": "batch", "max_tokens": 1024}
]`;

let timer = null;
let checking = null;
let draftSource = null;
let format = "rhai";

function draft() {
  return { source: document.getElementById("policy-source").value, format };
}

function paint(textarea, gutter, overlay, problem) {
  const lines = textarea.value.split("\n");
  textarea.rows = Math.max(lines.length + 1, 16);
  const bad = problem?.line ?? null;
  fill(gutter,
    ...lines.map((_, i) =>
      h("div", { class: i + 1 === bad ? "err" : null, "data-line": i + 1, title: i + 1 === bad ? problem.message : null }, String(i + 1)),
    ),
  );
  fill(overlay,
    ...lines.map((line, i) => (i + 1 === bad ? h("span", { class: "err-line" }, line || " ") : `${line}`)).flatMap((part, i) => (i ? ["\n", part] : [part])),
  );
}

async function check(textarea, gutter, overlay, status, applyButton) {
  checking?.abort();
  checking = new AbortController();
  let result;
  try {
    result = await api("/v1/policy/check", { method: "POST", body: draft(), signal: checking.signal });
  } catch (err) {
    if (err.name === "AbortError") return;
    fill(status, h("span", { class: "error" }, err.message));
    return;
  }
  draftSource = textarea.value;
  const problem = result.error;
  paint(textarea, gutter, overlay, problem);
  textarea.setAttribute("aria-invalid", problem ? "true" : "false");
  applyButton.dataset.valid = problem ? "false" : "true";
  if (problem) {
    const where = problem.line == null ? "" : `${problem.line}:${problem.column ?? 1}: `;
    fill(status, h("span", { class: "error", id: "policy-error" }, `${where}${problem.message}`));
  } else {
    fill(status, h("span", { class: "ok", id: "policy-ok" }, `ok: policy ${result.name}, ${result.lines} lines`));
  }
}

function decisionCell(d) {
  return h("td", { class: d.kind === "error" || d.kind === "reject" ? "error" : null, title: d.reasons.join("\n") }, d.text);
}

async function preview(out) {
  let jobs;
  try {
    jobs = JSON.parse(document.getElementById("policy-jobs").value);
  } catch (err) {
    fill(out, h("p", { class: "error" }, `sample jobs: not valid JSON (${err.message})`));
    return;
  }
  try {
    const result = await api("/v1/policy/preview", { method: "POST", body: { ...draft(), jobs } });
    const changed = result.rows.filter((r) => r.changed).length;
    fill(out,
      h("p", { id: "preview-summary" }, `${result.rows.length} jobs on the live cluster (${result.workers} workers, ${result.hives} hives): ${changed} decisions change from ${result.policy}`),
      table(
        ["job", "model", `now (${result.policy})`, "draft"],
        result.rows.map((r) => h("tr", { class: r.changed ? "changed" : null, "data-changed": String(r.changed) }, h("td", {}, r.job.id), h("td", {}, r.job.model), decisionCell(r.running), decisionCell(r.draft))),
        "preview",
      ),
    );
  } catch (err) {
    fill(out, h("p", { class: "error" }, err.message));
  }
}

async function replay(out) {
  const last = Number(document.getElementById("policy-last").value);
  try {
    const result = await api("/v1/policy/replay", { method: "POST", body: { ...draft(), last } });
    fill(out,
      h("p", { id: "replay-summary" }, `${result.replayed} decisions replayed: ${result.replayed - result.changed} the same, ${result.changed} different, ${result.errors} policy errors`),
      result.changed
        ? table(["job", "model", "was", "draft"], result.rows.filter((r) => r.changed).map((r) => h("tr", { class: "changed" }, h("td", {}, r.job_id), h("td", {}, r.model), h("td", {}, r.was), decisionCell(r.now))), "replay")
        : null,
    );
  } catch (err) {
    fill(out, h("p", { class: "error" }, err.message));
  }
}

function download(name, text) {
  const link = h("a", { href: URL.createObjectURL(new Blob([text], { type: "text/plain" })), download: name });
  link.click();
  URL.revokeObjectURL(link.href);
}

/** Save the draft as it is, and in the policy language (YAML rules compiled to it). */
async function exportDraft(out) {
  const { source } = draft();
  if (format === "yaml") download("rules.yaml", source);
  try {
    const compiled = await api("/v1/policy/compile", { method: "POST", body: draft() });
    download("policy.rhai", compiled.source);
    fill(out, h("p", { class: "ok", id: "export-result" }, format === "yaml" ? "exported rules.yaml and policy.rhai" : "exported policy.rhai"));
  } catch (err) {
    fill(out, h("p", { class: "error", id: "export-result" }, err.message));
  }
}

async function applyDraft(out, header) {
  try {
    const status = await api("/v1/policy/apply", { method: "POST", body: draft() });
    fill(out, h("p", { class: "ok", id: "apply-result" }, `applied: policy ${status.policy} from ${status.path}`));
    header.textContent = `running: ${status.policy} (${status.path})`;
  } catch (err) {
    fill(out, h("p", { class: "error", id: "apply-result" }, err.message));
  }
}

export async function start(view) {
  const running = await api("/v1/policy");
  if (draftSource === null && running.path && /\.ya?ml$/i.test(running.path)) format = "yaml";
  const header = h("p", { class: "muted", id: "policy-running" }, running.path ? `running: ${running.policy} (${running.path})` : `running: the built-in ${running.policy} policy`);
  const textarea = h("textarea", { id: "policy-source", spellcheck: "false", "aria-label": "policy source", autocapitalize: "off", wrap: "off" });
  textarea.value = draftSource ?? running.source ?? STARTER;
  const gutter = h("div", { class: "gutter", "aria-hidden": "true", id: "policy-gutter" });
  const overlay = h("pre", { "aria-hidden": "true" });
  const status = h("div", { class: "problem", id: "policy-status", role: "status" });
  const applyOut = h("div");
  const applyButton = h("button", { type: "button", id: "policy-apply", disabled: running.locked, onclick: () => applyDraft(applyOut, header) }, "Apply");
  const previewOut = h("div", { id: "preview-out" });
  const replayOut = h("div", { id: "replay-out" });
  const formatSelect = h(
    "select",
    {
      id: "policy-format",
      onchange: (event) => {
        format = event.target.value;
        // An untouched starter turns into the other form's starter.
        if ([STARTER, YAML_STARTER].includes(textarea.value)) textarea.value = format === "yaml" ? YAML_STARTER : STARTER;
        paint(textarea, gutter, overlay, null);
        schedule();
      },
    },
    h("option", { value: "rhai" }, "policy language"),
    h("option", { value: "yaml" }, "YAML rules"),
  );
  formatSelect.value = format;
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(() => check(textarea, gutter, overlay, status, applyButton), 250);
  };
  textarea.addEventListener("input", () => {
    paint(textarea, gutter, overlay, null);
    schedule();
  });
  textarea.addEventListener("keydown", (event) => {
    // Tab indents; Escape then Tab leaves the editor, so the keyboard is never trapped.
    if (event.key === "Tab" && !event.shiftKey && !textarea.dataset.escaped) {
      event.preventDefault();
      textarea.setRangeText("    ", textarea.selectionStart, textarea.selectionEnd, "end");
      textarea.dispatchEvent(new Event("input"));
    }
    textarea.dataset.escaped = event.key === "Escape" ? "1" : "";
  });
  view.append(
    h("h1", {}, "Policy"),
    header,
    h(
      "div",
      { class: "split" },
      h(
        "div",
        {},
        h("div", { class: "row" }, h("div", {}, h("label", { for: "policy-format" }, "format"), formatSelect), h("p", { class: "muted" }, "Tab indents; Esc then Tab leaves the editor.")),
        h("div", { class: "editor" }, gutter, h("div", { class: "code" }, overlay, textarea)),
        status,
        h(
          "div",
          { class: "row" },
          applyButton,
          h("button", { type: "button", class: "secondary", id: "policy-export", onclick: () => exportDraft(applyOut) }, "Export"),
          running.locked ? h("span", { class: "muted" }, "The policy is locked (platform mode).") : null,
        ),
        applyOut,
      ),
      h(
        "div",
        {},
        h("h2", {}, "Preview on the live cluster"),
        h("label", { for: "policy-jobs" }, "sample jobs (JSON: id, model, priority, prompt_tokens, max_tokens, tenant, labels)"),
        h("textarea", { id: "policy-jobs", class: "prompt", rows: 6, spellcheck: "false" }, SAMPLE_JOBS),
        h("div", { class: "row" }, h("button", { type: "button", id: "policy-preview", onclick: () => preview(previewOut) }, "Preview")),
        previewOut,
        h("h2", {}, "Replay the last decisions"),
        h("div", { class: "row" }, h("div", {}, h("label", { for: "policy-last" }, "last N jobs"), h("input", { id: "policy-last", type: "number", min: 1, max: 10000, value: 100 })), h("button", { type: "button", id: "policy-replay", onclick: () => replay(replayOut) }, "Replay")),
        replayOut,
      ),
    ),
  );
  paint(textarea, gutter, overlay, null);
  check(textarea, gutter, overlay, status, applyButton);
}

export function stop() {
  clearTimeout(timer);
  checking?.abort();
  const textarea = document.getElementById("policy-source");
  if (textarea) draftSource = textarea.value;
}
