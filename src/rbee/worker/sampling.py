"""Picking the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

The random draw for a token depends only on the request's seed and the token's position in the
generated text (a counter-based generator: a hash of the two), not on a generator's state. So the
same seed makes the same draws however many other requests share the batch, and a generation that
is resumed at position n on another worker draws as the uninterrupted one would have. The tokens
are the same as long as the logits are: the kernels ONNX Runtime picks for a batch, or for a
resumed prompt's prefill, round differently (about 1e-4, up to 3e-2 through int4's 8-bit output
projection in a batch), so a draw that close to the boundary between two tokens can take the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from rbee.wire.worker import SamplingParams

__all__ = [
    "apply_repetition_penalty",
    "sample",
    "softmax",
    "top_k_mask",
    "top_p_mask",
    "uniform",
]

Floats = npt.NDArray[np.float32]


def uniform(seed: int, position: int) -> float:
    """A draw in [0, 1) that is a function of ``seed`` and ``position`` alone (53 random bits)."""
    digest = hashlib.blake2b(b"%d:%d" % (seed, position), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) * 2.0**-53


def apply_repetition_penalty(logits: Floats, seen: Iterable[int], penalty: float) -> Floats:
    """Make every token in ``seen`` less likely (CTRL's rule: divide positive logits, multiply negative)."""
    ids = np.fromiter(set(seen), dtype=np.int64)
    if penalty == 1.0 or ids.size == 0:
        return logits
    out = logits.copy()
    picked = out[ids]
    out[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def top_k_mask(logits: Floats, k: int) -> Floats:
    """Keep the ``k`` largest logits (ties at the cut are kept), the rest become -inf; 0 keeps all."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf).astype(np.float32)


def softmax(logits: Floats) -> npt.NDArray[np.float64]:
    """Probabilities from logits, computed in float64 so that tiny ones do not vanish."""
    shifted = logits.astype(np.float64) - np.max(logits)
    exp: npt.NDArray[np.float64] = np.exp(shifted)
    probs: npt.NDArray[np.float64] = exp / exp.sum()
    return probs


def top_p_mask(logits: Floats, p: float) -> Floats:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (nucleus)."""
    if p >= 1.0:
        return logits
    probs = softmax(logits)
    # Sorting the whole vocabulary costs milliseconds; the nucleus almost always lies among the
    # few hundred most likely tokens, so sort those and widen only when their mass falls short.
    size = min(256, probs.size)
    while True:
        top = np.argpartition(-probs, size - 1)[:size] if size < probs.size else np.arange(size)
        order = top[np.argsort(-probs[top], kind="stable")]
        ranked = probs[order]
        if size == probs.size or ranked.sum() >= p:
            break
        size = min(probs.size, size * 8)
    # The token that crosses p stays in: keep every token whose preceding mass is still below p.
    keep = order[(np.cumsum(ranked) - ranked) < p]
    out = np.full_like(logits, -np.inf)
    out[keep] = logits[keep]
    return out


def sample(
    logits: Floats, params: SamplingParams, seed: int, position: int, seen: Iterable[int] = ()
) -> int:
    """The token at ``position`` (0 for the first generated one) of the sequence seeded ``seed``.

    ``seen`` (prompt and output so far) feeds the penalty.
    """
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return int(np.argmax(logits))
    scaled = (logits / np.float32(params.temperature)).astype(np.float32)
    scaled = top_p_mask(top_k_mask(scaled, params.top_k), params.top_p)
    probs = softmax(scaled)
    # Inverse-CDF with one uniform draw per token, the draw fixed by the seed and the position.
    draw = uniform(seed, position) * probs.sum()
    index = int(np.searchsorted(np.cumsum(probs), draw, side="right"))
    return min(index, probs.size - 1)
