// Jobs: the latest jobs, live; one job's trace: queue wait, time to first token, tokens/s, the
// worker, each attempt, and the scheduling decision with its reasons.
import { ago, api, fill, h, ms, num, table } from "./lib.js";

let timer = null;

function rate(job) {
  if (!job.tokens_out || job.started_at == null || job.finished_at == null) return null;
  const decodeS = job.finished_at - job.started_at - (job.ttft_ms ?? 0) / 1000;
  return decodeS > 0 ? job.tokens_out / decodeS : null;
}

function row(job) {
  const open = () => { location.hash = `#/jobs/${job.id}`; };
  return h(
    "tr",
    { class: "pick", tabindex: 0, "data-job": job.id, onclick: open, onkeydown: (e) => { if (e.key === "Enter") open(); } },
    h("td", {}, h("a", { href: `#/jobs/${job.id}`, tabindex: -1 }, job.id)),
    h("td", {}, job.model),
    h("td", { class: `state-${job.state}` }, job.state),
    h("td", {}, job.worker ?? "-"),
    h("td", { class: "num" }, ms(job.queue_wait_ms)),
    h("td", { class: "num" }, ms(job.ttft_ms)),
    h("td", { class: "num" }, num(job.tokens_out)),
    h("td", { class: "num" }, num(rate(job), 1)),
    h("td", {}, ago(job.created_at)),
  );
}

async function refresh(root) {
  const list = await api("/v1/jobs?limit=100");
  fill(root,
    list.jobs.length
      ? table(["job", "model", "state", "worker", "queue wait", "first token", "tokens", "tokens/s", "created"], list.jobs.map(row), "jobs")
      : h("p", { class: "muted" }, "No job yet: send one from the playground."),
  );
}

function trace(job) {
  const d = job.decision;
  const items = [
    ["state", h("span", { class: `state-${job.state}` }, job.state)],
    ["model", job.model],
    ["priority", job.priority],
    ["tenant", job.tenant || "-"],
    ["worker", job.worker ?? "-"],
    ["queue wait", ms(job.queue_wait_ms)],
    ["first token", ms(job.ttft_ms)],
    ["tokens", `${num(job.tokens_in)} in, ${num(job.tokens_out)} out`],
    ["tokens/s", num(rate(job), 1)],
    ["attempts", String(job.attempts)],
    ["finish", job.finish_reason ?? "-"],
    ["error", job.error ?? "-"],
  ];
  return [
    h("dl", { class: "trace", id: "job-trace" }, items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "Attempts"),
    job.attempt_log.length
      ? table(["#", "worker", "started", "took", "error"], job.attempt_log.map((a) => [String(a.n), a.worker, ago(a.started_at), a.ended_at == null ? "-" : ms((a.ended_at - a.started_at) * 1000), a.error ?? "-"]), "attempts")
      : h("p", { class: "muted" }, "No attempt logged."),
    h("h2", {}, "Decision"),
    d
      ? h(
          "div",
          { id: "job-decision" },
          h("p", {}, `${d.policy}: ${d.kind}${d.target ? ` ${d.target}` : ""}${d.error ? ` (policy error: ${d.error})` : ""}`, h("span", { class: "muted" }, ` · ${d.snapshot.workers.length} workers, ${d.snapshot.hives.length} hives seen`)),
          h("ol", { class: "reasons" }, d.reasons.map((r) => h("li", {}, r))),
        )
      : h("p", { class: "muted" }, "No decision logged."),
  ];
}

async function showJob(root, id) {
  const job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  fill(root, h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), h("h2", {}, job.id), ...trace(job));
  if (job.state === "queued" || job.state === "running") timer = setTimeout(() => showJob(root, id), 1000);
}

export function start(view, { arg }) {
  const root = h("div", { id: "jobs" });
  view.append(h("h1", {}, "Jobs"), root);
  const fail = (err) => fill(root, h("p", { class: "error" }, err.message));
  if (arg) {
    showJob(root, arg).catch(fail);
    return;
  }
  const loop = () => refresh(root).then(() => { timer = setTimeout(loop, 1000); }, fail);
  loop();
}

export function stop() {
  clearTimeout(timer);
}
