"""How long decoding streams pause when a long prompt joins them, with and without prefill pieces.

Usage: ``python bench/prefill.py [--models-dir DIR] [--threads 2] [--prompt-tokens 1000]``.

Runs in-process, the real engine (int4) driven by the worker's batching core: four streams decode,
then a ``--prompt-tokens`` prompt is admitted. For each way of running that prompt (in pieces of
`rbee.worker.batch.PREFILL_CHUNK` tokens a step, the worker's way, and in one piece) it prints the
longest pause between two tokens of the decoding streams, the long prompt's time to first token,
and the four streams' tokens/s over the whole run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from rbee.config import WorkerConfig
from rbee.models.importer import DEFAULT_MODEL, default_model_path, import_gguf
from rbee.models.store import ModelStore
from rbee.wire.worker import SamplingParams, Token
from rbee.worker.batch import PREFILL_CHUNK, Admit, Batch
from rbee.worker.daemon import load_model
from rbee.worker.interfaces import EngineLike, TokenizerLike

STREAMS = 4
TOKENS = 96


class _NoStops:
    """The model's tokenizer with no end-of-turn tokens: every stream decodes its full length."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self.stop_token_ids: Sequence[int] = ()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(token_ids)

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        return self._tokenizer.render_chat(messages)


def run(
    engine: EngineLike, tokenizer: TokenizerLike, long_ids: list[int], chunk: int
) -> tuple[float, float, float]:
    """(longest pause ms, long prompt's time to first token ms, decoding streams' tokens/s)."""
    batch = Batch(engine, _NoStops(tokenizer), prefill_chunk=chunk)
    params = SamplingParams(temperature=0.0, max_tokens=TOKENS)
    streams = [
        Admit(f"s{i}", i, tokenizer.encode(f"Tell me about topic {i}."), params, 0.0)
        for i in range(STREAMS)
    ]
    batch.step(streams)
    for _ in range(8):
        batch.step()
    last: dict[str, float] = {}
    pause, first_token, tokens = 0.0, 0.0, 0
    start = time.perf_counter()
    admit = [Admit("long", STREAMS, long_ids, SamplingParams(max_tokens=1), start)]
    while len(batch):
        out = batch.step(admit)
        admit = []
        now = time.perf_counter()
        for key, events in out.events.items():
            if not any(isinstance(e, Token) for e in events):
                continue
            if key == "long":
                first_token = first_token or now - start
                continue
            tokens += 1
            pause = max(pause, now - last.get(key, start))
            last[key] = now
    return pause * 1000, first_token * 1000, tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="A model store with the default model.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    args = parser.parse_args()
    root = args.models_dir or Path.home() / ".cache" / "rbee" / "models"
    if not ModelStore(root).has(DEFAULT_MODEL):
        import_gguf(ModelStore(root), default_model_path(), name=DEFAULT_MODEL)
    config = WorkerConfig(precision="int4", threads=args.threads, slots=STREAMS + 1)
    engine, tokenizer, _ = load_model(DEFAULT_MODEL, config, root)
    text = " ".join(f"Line {i} of a long document about bees and flowers." for i in range(400))
    long_ids = tokenizer.encode(text)[: args.prompt_tokens]
    print(
        f"{STREAMS} streams decoding ({args.threads} threads, int4) when a "
        f"{len(long_ids)}-token prompt joins:"
    )
    print("prompt run         longest pause ms  its first token ms  streams tok/s")
    for label, chunk in [
        (f"in {PREFILL_CHUNK}-token pieces", PREFILL_CHUNK),
        ("in one piece", 10**9),
    ]:
        pause, ttft, rate = run(engine, tokenizer, long_ids, chunk)
        print(f"{label:<18} {pause:16.0f}  {ttft:18.0f}  {rate:13.1f}")


if __name__ == "__main__":
    main()
