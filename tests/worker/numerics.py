"""How far the real engine's logits may move with the shape of the run that computes them.

ONNX Runtime picks its kernels by the number of rows in a run, and the kernels accumulate in other
orders, so the same position's logits (~20) differ a little between a one-row and a many-row run.
int4's output projection quantizes activations to int8 and runs other kernels per batch size
(seen up to 3e-2 on a decode of four rows); fp16 rounds every activation to half precision after
kernels that accumulate in another order for each (up to 0.33 seen, about what separates either
from fp32). A test that compares texts across run shapes holds only where the choices it compares
are further apart than this (`greedy_margin`); one that compares a resumed generation with the
whole one holds where no cut it can meet changes the text (`cuts_that_change_the_text`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import numpy as np

from rbee.wire.worker import SamplingParams
from rbee.worker.engine import Engine
from rbee.worker.sampling import sample

__all__ = ["TOLERANCE", "cuts_that_change_the_text", "greedy_margin", "sampled_run"]

TOLERANCE = {"fp32": 2e-3, "int4": 5e-2, "fp16": 0.5}


def greedy_margin(
    engine: Engine, prompt_ids: Sequence[int], max_tokens: int, stop_ids: Sequence[int]
) -> float:
    """The smallest gap between the two largest logits over a greedy run of one slot, alone."""
    logits = engine.prefill(0, prompt_ids)
    gaps = []
    for _ in range(max_tokens):
        second, first = np.sort(logits)[-2:]
        gaps.append(float(first - second))
        token = int(logits.argmax())
        if token in stop_ids:
            break
        logits = engine.decode([0], [token])[0]
    engine.release(0)
    return min(gaps)


def sampled_run(
    engine: Engine, prompt_ids: Sequence[int], params: SamplingParams, start: int = 0
) -> list[int]:
    """``params.max_tokens`` tokens after ``prompt_ids`` from one slot, alone, as a worker picks them.

    ``start`` is the position of the first (a resumed generation's, `Resume`); no seed draws as 0.
    """
    seed = 0 if params.seed is None else params.seed
    logits = engine.prefill(0, prompt_ids)
    out: list[int] = []
    for position in range(start, start + params.max_tokens):
        token = sample(logits, params, seed, position, [*prompt_ids, *out])
        out.append(token)
        if len(out) < params.max_tokens:
            logits = engine.decode([0], [token])[0]
    engine.release(0)
    return out


def cuts_that_change_the_text(
    engine: Engine, prompt_ids: Sequence[int], params: SamplingParams, cuts: Iterable[int]
) -> list[int]:
    """Where a generation resumed after that many tokens would not continue as the whole one."""
    whole = sampled_run(engine, prompt_ids, params)
    changed = []
    for cut in cuts:
        rest = msgspec.structs.replace(params, max_tokens=params.max_tokens - cut)
        if whole[:cut] + sampled_run(engine, [*prompt_ids, *whole[:cut]], rest, cut) != whole:
            changed.append(cut)
    return changed
