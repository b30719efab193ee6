"""GGUF blocks in the layout of ONNX Runtime's ``com.microsoft.MatMulNBits``, without requantising.

MatMulNBits computes each weight as ``scale * (q - zp)`` with an integer zero point ``zp`` per
block along K (16 or 32 values, 4- or 8-bit codes). A type without a float offset (Q4_0, Q3_K,
Q5_0, Q6_K, Q8_0) fits exactly with the op's default zero point, which `rbee.models.quants`
chose its codes for. A type with one (Q4_1, Q5_1, and the K-quants' minimums) stores
``d * q + m``: we keep the codes and ``scale = d``, take ``zp = round(-m / d)`` clamped to the
code range, and carry the remainder ``r = m + d * zp`` exactly::

    W[n, k] = d * (q - zp) + r            (per block b = k // block)
    (x @ W.T)[n] = MatMulNBits(x)[n] + sum_b r[n, b] * sum_{k in b} x[k]

so the graph adds ``blocksum(x) @ R`` with ``R[b, n] = r[n, b]``: a ``[.., K/block] x [K/block,
N]`` MatMul, small next to the quantized one. Float zero points would express ``m`` directly but
run about 30x slower in ONNX Runtime's CPU kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from rbee.models.quants import QuantBlocks

__all__ = ["NBitsWeight", "lookup_residual", "stack_rows", "to_nbits"]


@dataclasses.dataclass(frozen=True)
class NBitsWeight:
    """The inputs of one MatMulNBits node (``N`` x ``K``) plus the optional residual matrix."""

    n: int
    k: int
    bits: int
    block: int
    packed: npt.NDArray[np.uint8]  # [N, K/block, block*bits/8]
    scales: npt.NDArray[np.float32]  # [N * K/block]
    zero_points: npt.NDArray[np.uint8] | None  # 4 bits: [N, ceil(K/block / 2)]; 8: [N, K/block]
    residual: npt.NDArray[np.float32] | None  # [K/block, N]

    def without_codes(self) -> NBitsWeight:
        """This weight with ``packed`` emptied (no rows): the small parts of a run of rows whose
        codes are written already, kept for `stack_rows`."""
        empty = np.empty((0, *self.packed.shape[1:]), np.uint8)
        return dataclasses.replace(self, packed=empty)


def pack_codes(q: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    """Codes ``[.., block]`` as MatMulNBits (and GatherBlockQuantized) read them."""
    if bits == 8:
        return np.ascontiguousarray(q)
    # Element j of a block sits in byte j // 2, low nibble for even j.
    pairs = q.reshape(*q.shape[:-1], q.shape[-1] // 2, 2)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def _pack_zero_points(zp: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    if bits == 8:
        return np.ascontiguousarray(zp)
    rows, blocks = zp.shape
    if blocks % 2:
        zp = np.concatenate([zp, np.zeros((rows, 1), np.uint8)], axis=1)
    pairs = zp.reshape(rows, -1, 2)
    return np.ascontiguousarray(pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def to_nbits(blocks: QuantBlocks) -> NBitsWeight:
    """Lay out ``blocks`` for MatMulNBits; exact up to float32 rounding of ``r``."""
    rows = blocks.q.shape[0]
    packed = pack_codes(blocks.q, blocks.bits)
    scales = np.ascontiguousarray(blocks.d, dtype=np.float32).reshape(-1)
    default_zp = 1 << (blocks.bits - 1)
    shape = (rows, blocks.cols, blocks.bits, blocks.block, packed, scales)
    if blocks.m is None and blocks.zero == default_zp:
        return NBitsWeight(*shape, None, None)
    offsets = blocks.offsets()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(blocks.d != 0, -offsets / blocks.d, 0.0)
    zp = np.clip(np.rint(ratio), 0, (1 << blocks.bits) - 1).astype(np.uint8)
    residual = (offsets + blocks.d * zp.astype(np.float32)).astype(np.float32)
    return NBitsWeight(*shape, _pack_zero_points(zp, blocks.bits), np.ascontiguousarray(residual.T))


def lookup_residual(blocks: QuantBlocks) -> npt.NDArray[np.float32] | None:
    """The residual ``[rows, K/block]`` of ``blocks`` with the default zero point ``zp = 2^(bits
    - 1)`` for every block, ``W = d * (q - zp) + r``, as ``GatherBlockQuantized`` looks rows up
    without zero points; ``None`` where the type needs none. (ONNX Runtime's CPU and CUDA kernels
    of that op read 4-bit zero points of ``[N, K/block, block/2]`` codes differently.)"""
    default_zp = 1 << (blocks.bits - 1)
    if blocks.m is None and blocks.zero == default_zp:
        return None
    residual: npt.NDArray[np.float32] = (
        blocks.offsets() + blocks.d * np.float32(default_zp)
    ).astype(np.float32)
    return residual


def stack_rows(parts: Sequence[NBitsWeight]) -> NBitsWeight:
    """One weight of the rows of ``parts``, consecutive runs of rows of one matrix: the same
    arrays as `to_nbits` of the whole matrix (each is laid out row by row)."""
    first = parts[0]
    zero_points = residual = None
    if first.zero_points is not None:
        zero_points = np.concatenate([p.zero_points for p in parts if p.zero_points is not None])
    if first.residual is not None:
        residual = np.concatenate([p.residual for p in parts if p.residual is not None], axis=1)
    return NBitsWeight(
        sum(p.n for p in parts),
        first.k,
        first.bits,
        first.block,
        np.concatenate([p.packed for p in parts]),
        np.concatenate([p.scales for p in parts]),
        zero_points,
        residual,
    )
