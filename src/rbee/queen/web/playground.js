// Playground: a chat through the queen's OpenAI-compatible endpoint, streamed token by token,
// with the model and sampling settings, and which worker answered and why.
import { api, fill, h, ms, num, servedModels, stream } from "./lib.js";

let controller = null;
const messages = [];

function field(label, input) {
  return h("div", {}, h("label", { for: input.id }, label), input);
}

function settings(models) {
  const model = h("input", { id: "pg-model", list: "pg-models", value: models[0] ?? "smollm2-135m-instruct", size: 26 });
  return h(
    "div",
    { class: "row", role: "group", "aria-label": "settings" },
    field("model", model),
    h("datalist", { id: "pg-models" }, models.map((m) => h("option", { value: m }))),
    field("temperature", h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 })),
    field("top p", h("input", { id: "pg-top-p", type: "number", min: 0, max: 1, step: 0.05, value: 1 })),
    field("max tokens", h("input", { id: "pg-max-tokens", type: "number", min: 1, max: 4096, value: 128 })),
    field("seed", h("input", { id: "pg-seed", type: "number", placeholder: "none" })),
  );
}

function value(id) {
  return document.getElementById(id).value;
}

function requestBody() {
  const body = {
    model: value("pg-model"),
    messages: messages.map(({ role, content }) => ({ role, content })),
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number(value("pg-temperature")),
    top_p: Number(value("pg-top-p")),
    max_tokens: Number(value("pg-max-tokens")),
  };
  if (value("pg-seed") !== "") body.seed = Number(value("pg-seed"));
  return body;
}

function bubble(role, text) {
  const body = h("div", { class: "text" }, text);
  return { el: h("div", { class: `msg ${role}` }, h("b", {}, role), body), body };
}

async function explain(info, jobId) {
  fill(info, h("span", { class: "muted" }, "…"));
  const job = await api(`/v1/jobs/${jobId}`);
  const d = job.decision;
  fill(info,
    h(
      "dl",
      { class: "trace", id: "pg-answered" },
      h("dt", {}, "worker"),
      h("dd", { id: "pg-worker" }, job.worker ?? "-"),
      h("dt", {}, "job"),
      h("dd", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
      h("dt", {}, "queue wait"),
      h("dd", {}, ms(job.queue_wait_ms)),
      h("dt", {}, "first token"),
      h("dd", {}, ms(job.ttft_ms)),
      h("dt", {}, "tokens"),
      h("dd", {}, `${num(job.tokens_in)} in, ${num(job.tokens_out)} out`),
      h("dt", {}, "policy"),
      h("dd", {}, d ? `${d.policy}: ${d.kind} ${d.target ?? ""}` : "-"),
    ),
    d ? h("ol", { class: "reasons" }, d.reasons.map((r) => h("li", {}, r))) : null,
  );
}

async function send(log, info, prompt, button) {
  const text = prompt.value.trim();
  if (!text) return;
  messages.push({ role: "user", content: text });
  log.append(bubble("user", text).el);
  prompt.value = "";
  const answer = bubble("assistant", "");
  answer.body.id = "pg-answer";
  log.querySelector("#pg-answer")?.removeAttribute("id");
  log.append(answer.el);
  button.disabled = true;
  controller = new AbortController();
  let jobId = null;
  let reply = "";
  try {
    await stream(
      "/v1/chat/completions",
      requestBody(),
      (data) => {
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        jobId = `job-${chunk.id.replace(/^chatcmpl-/, "")}`;
        const piece = chunk.choices?.[0]?.delta?.content ?? "";
        reply += piece;
        answer.body.textContent = reply;
        log.scrollTop = log.scrollHeight;
      },
      { signal: controller.signal },
    );
    messages.push({ role: "assistant", content: reply });
    answer.el.dataset.done = "true";
    if (jobId) await explain(info, jobId);
  } catch (err) {
    fill(answer.body, h("span", { class: "error" }, err.message));
    answer.el.dataset.done = "error";
    messages.pop();
  } finally {
    button.disabled = false;
    controller = null;
    prompt.focus();
  }
}

export async function start(view) {
  let models = [];
  try {
    models = await servedModels();
  } catch {
    // No model served yet: the field keeps the default model's name.
  }
  const log = h("div", { class: "chat", id: "pg-log", "aria-live": "polite", "aria-label": "conversation" });
  const info = h("div", { id: "pg-info" }, h("p", { class: "muted" }, "Which worker answered, and why, shows here."));
  const prompt = h("textarea", { id: "pg-prompt", class: "prompt", placeholder: "Ask something (Ctrl+Enter sends)" });
  const button = h("button", { type: "submit", id: "pg-send" }, "Send");
  const clear = h("button", { type: "button", class: "secondary", onclick: () => { messages.length = 0; fill(log); } }, "New chat");
  const form = h(
    "form",
    { onsubmit: (event) => { event.preventDefault(); send(log, info, prompt, button); } },
    h("label", { for: "pg-prompt" }, "message"),
    prompt,
    h("div", { class: "row" }, button, clear),
  );
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  view.append(
    h("h1", {}, "Playground"),
    settings(models),
    h("div", { class: "split" }, h("div", {}, log, form), h("aside", { "aria-label": "answered by" }, h("h2", {}, "Answered by"), info)),
  );
  for (const m of messages) log.append(bubble(m.role, m.content).el);
  prompt.focus();
}

export function stop() {
  controller?.abort();
}
