"""GGUF blocks in the layout of ONNX Runtime's ``com.microsoft.MatMulNBits``, without requantising.

MatMulNBits computes each weight as ``scale * (q - zp)`` with an integer zero point ``zp`` per
block of 32 along K. ``Q4_0`` and ``Q8_0`` fit exactly (``zp`` 8 and 128, the op's defaults).
``Q4_1`` stores ``d * q + m`` with a float offset ``m``: we keep the codes and ``scale = d``, take
``zp = round(-m / d)`` clamped to ``0..15``, and carry the remainder ``r = m + d * zp`` exactly::

    W[n, k] = d * (q - zp) + r            (per block b = k // 32)
    (x @ W.T)[n] = MatMulNBits(x)[n] + sum_b r[n, b] * sum_{k in b} x[k]

so the graph adds ``blocksum(x) @ R`` with ``R[b, n] = r[n, b]``: a ``[.., K/32] x [K/32, N]``
MatMul, small next to the 4-bit one. Float zero points would express ``m`` directly but run
about 30x slower in ONNX Runtime's CPU kernels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from rbee.models.gguf_file import QuantBlocks

__all__ = ["NBitsWeight", "to_nbits"]


@dataclasses.dataclass(frozen=True)
class NBitsWeight:
    """The inputs of one MatMulNBits node (``N`` x ``K``) plus the optional residual matrix."""

    n: int
    k: int
    bits: int
    packed: npt.NDArray[np.uint8]  # [N, K/32, 32*bits/8]
    scales: npt.NDArray[np.float32]  # [N * K/32]
    zero_points: npt.NDArray[np.uint8] | None  # [N, ceil(K/32 / 2)] for 4 bits; None = default
    residual: npt.NDArray[np.float32] | None  # [K/32, N]


def _pack_codes(q: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    if bits == 8:
        return np.ascontiguousarray(q)
    # MatMulNBits: element j of a block sits in byte j // 2, low nibble for even j.
    pairs = q.reshape(*q.shape[:-1], q.shape[-1] // 2, 2)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def _pack_zero_points(zp: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    rows, blocks = zp.shape
    if blocks % 2:
        zp = np.concatenate([zp, np.zeros((rows, 1), np.uint8)], axis=1)
    pairs = zp.reshape(rows, -1, 2)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def to_nbits(blocks: QuantBlocks) -> NBitsWeight:
    """Lay out ``blocks`` for MatMulNBits; exact up to float32 rounding of ``r``."""
    rows, nblocks, _ = blocks.q.shape
    packed = _pack_codes(blocks.q, blocks.bits)
    scales = np.ascontiguousarray(blocks.d, dtype=np.float32).reshape(-1)
    default_zp = 1 << (blocks.bits - 1)
    # Q4_0 / Q8_0 offsets are exactly -default_zp * d: the op's default zero point, no residual.
    if np.array_equal(blocks.m, -default_zp * blocks.d):
        return NBitsWeight(rows, nblocks * 32, blocks.bits, packed, scales, None, None)
    if blocks.bits != 4:
        raise ValueError("only 4-bit blocks carry a float offset")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(blocks.d != 0, -blocks.m / blocks.d, 0.0)
    zp = np.clip(np.rint(ratio), 0, 15).astype(np.uint8)
    residual = (blocks.m + blocks.d * zp.astype(np.float32)).astype(np.float32)
    return NBitsWeight(
        rows,
        nblocks * 32,
        4,
        packed,
        scales,
        _pack_zero_points(zp),
        np.ascontiguousarray(residual.T),
    )
