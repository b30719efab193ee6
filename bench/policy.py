"""Policy language figures: decision latency, compile time, and how far past the deadline it runs.

Usage: ``python bench/policy.py [--runs 300]``. For each shipped policy in ``policies/`` it prints
p50/p99 decision latency at 10, 100 and 1,000 workers; then the parse+compile time of a generated
200-line policy; then, for hostile scripts that never finish on their own, how long past the 50 ms
deadline the evaluation ran (worst of several runs, measured outside the evaluator).
Targets: p99 < 1 ms at 100 workers and < 5 ms at 1,000; overshoot < 5 ms; compile < 50 ms.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

from rbee.errors import PolicyError
from rbee.policy import Limits, load_file, load_source, parse
from rbee.wire.queen import GpuTelemetry, HiveView, JobView, Snapshot, WorkerView

ROOT = Path(__file__).resolve().parent.parent


def cluster(n: int) -> Snapshot:
    """``n`` workers over n/10 hives, three models, mixed load, labels region and cost."""
    hives = max(n // 10, 1)

    def labels(i: int) -> dict[str, str]:
        return {"region": "eu" if i % 2 else "us", "cost": f"0.{i % 9 + 1}"}

    return Snapshot(
        workers=tuple(
            WorkerView(
                id=f"w{i:04d}",
                hive=f"h{i % hives}",
                model=f"model-{i % 3}",
                device="cuda:0",
                state="ready",
                slots_total=4,
                slots_free=i % 5,
                cpu_pct=float(i % 97),
                vram_mb=float(1000 * (i % 7)),
                total_vram_mb=24000.0 * (1 + i % 4),
                labels=labels(i % hives),
            )
            for i in range(n)
        ),
        hives=tuple(
            HiveView(
                name=f"h{i}",
                labels=labels(i),
                gpus=(
                    GpuTelemetry(
                        index=0, name="GPU", util_pct=0.0, vram_total_mb=24000, vram_used_mb=1000
                    ),
                ),
                ram_free_mb=64000.0,
                models=("model-0", "model-1", "model-2"),
                workers=10,
            )
            for i in range(hives)
        ),
    )


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def latency(runs: int) -> None:
    print(f"decision latency, ms (p50 / p99 over {runs} decisions, job for model-0)")
    sizes = (10, 100, 1000)
    print(f"  {'policy':30}" + "".join(f"{f'{n} workers':>20}" for n in sizes))
    job = JobView(id="job-1", model="model-0", labels={"lat": "48.9", "lon": "2.4"})
    for path in sorted((ROOT / "policies").glob("*.rhai")):
        policy = load_file(path)
        cells = []
        for n in sizes:
            snap = cluster(n)
            samples = []
            for _ in range(runs):
                started = time.perf_counter()
                policy.schedule(job, snap)
                samples.append((time.perf_counter() - started) * 1000)
            cells.append(f"{statistics.median(samples):.3f} / {percentile(samples, 0.99):.3f}")
        print(f"  {path.stem:30}" + "".join(f"{c:>20}" for c in cells))


def long_policy() -> str:
    """A 200-line policy: 24 scoring functions and a schedule_job that uses them all."""
    lines: list[str] = []
    for i in range(24):
        lines += [
            f"// score {i}: a made-up mix of load, memory and labels",
            f"fn score_{i}(w, job) {{",
            f"    let base = w.load * {i + 1} + w.cpu_pct / 100.0;",
            '    if w.labels.get("region", "") == "eu" && job.priority == "interactive" {',
            f"        return base - {i} * 0.01;",
            "    }",
            f"    base + w.vram_mb / (w.total_vram_mb + 1.0) * {i % 5}",
            "}",
        ]
    body = [
        "fn schedule_job(job, workers, hives) {",
        "    let free = workers.with_model(job.model).available();",
        "    if free.is_empty() {",
        '        return queue("busy");',
        "    }",
    ]
    calls = " + ".join(f"score_{i}(w, job)" for i in range(3))
    body += [f"    let pick_{i} = free.min_by(|w| score_{i}(w, job));" for i in range(3, 24)]
    body += [f"    return free.min_by(|w| {calls});", "}"]
    text = "\n".join(lines + body) + "\n"
    assert len(text.splitlines()) >= 200, len(text.splitlines())
    return text


def compile_time(runs: int) -> None:
    source = long_policy()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        load_source(source, "long.rhai")
        samples.append((time.perf_counter() - started) * 1000)
    print(
        f"parse + compile, {len(source.splitlines())}-line policy: "
        f"median {statistics.median(samples):.1f} ms, worst {max(samples):.1f} ms"
    )


HOSTILE = {
    "nested ranges": "range(0, 9000).map(|i| range(0, 9000).count(|j| j > i))",
    "helpers inside helpers": "workers.map(|a| workers.map(|b| workers.count(|c| c.load > a.load)))",
    "sorting forever": "range(0, 9000).map(|i| range(0, 9000).sort_by(|j| 0 - j).len())",
    "exponential recursion": "fib(30)",
    "string doubling under budget": 'range(0, 15).reduce(|s, i| s + s, "ab").len() + fib(30)',
}


def overshoot(runs: int) -> None:
    limits = Limits(max_operations=10**12)  # default limits but the budget: the clock must stop it
    snap = cluster(100)
    job = JobView(id="job-1", model="model-0")
    print(f"hostile scripts against the {limits.deadline_ms:g} ms deadline (worst of {runs} runs)")
    worst_all = 0.0
    for name, expr in HOSTILE.items():
        source = (
            "fn fib(n) { if n < 2 { return n; } fib(n - 1) + fib(n - 2) }\n"
            f"fn schedule_job(job, workers) {{ {expr}; workers.first() }}\n"
        )
        policy = load_source(source, "hostile.rhai", limits)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            try:
                policy.schedule(job, snap)
            except PolicyError as err:
                if "deadline" not in err.message:
                    raise
            else:
                raise SystemExit(f"hostile script {name!r} finished")
            samples.append((time.perf_counter() - started) * 1000)
        worst = max(samples)
        worst_all = max(worst_all, worst - limits.deadline_ms)
        print(
            f"  {name:30} stopped after median {statistics.median(samples):6.1f} ms, "
            f"worst {worst:6.1f} ms ({worst - limits.deadline_ms:+.1f} ms)"
        )
    print(f"  worst overshoot: {worst_all:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    started = time.perf_counter()
    parse.parser()
    print(f"grammar build (once per process): {(time.perf_counter() - started) * 1000:.1f} ms")
    gc.collect()
    latency(args.runs)
    compile_time(20)
    overshoot(9)


if __name__ == "__main__":
    main()
