"""GGUF's block-quantized tensor types as integer codes, scales and offsets, without rounding.

Every supported type is read into one form, `QuantBlocks`: per block of ``block`` values along a
row, a float32 scale ``d``, unsigned integer codes ``q`` and an optional float32 offset ``m``, with
value ``d * (q - zero) + m``. ``zero`` is a constant of the whole matrix (the default zero point
of ONNX Runtime's ``MatMulNBits``, ``8`` for 4-bit and ``128`` for 8-bit codes, where the type has
no offset). Codes are 4-bit when the type's values fit (Q4_0, Q4_1, Q4_K, and the 2- and 3-bit
Q2_K, Q3_K), else 8-bit (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0); a 5- or 6-bit value is shifted into the
8-bit range exactly. A K-quant's sub-block scale ``d * sc`` and minimum ``dmin * m`` are products
of an f16 and a small integer, exact in float32, so `QuantBlocks.dequantize` reproduces the
``gguf`` package's own dequantization bit for bit.

The block layouts (ggml's ``ggml-common.h``; ``QK_K = 256`` values per K-quant super-block):

- ``Q4_0`` (32, 18 bytes): f16 ``d``, 16 bytes of nibbles; ``d * (q - 8)``.
- ``Q4_1`` (32, 20): f16 ``d``, f16 ``m``, 16 bytes of nibbles; ``d * q + m``.
- ``Q5_0`` (32, 22): f16 ``d``, 32 high bits, 16 bytes of nibbles; ``d * (q - 16)``.
- ``Q5_1`` (32, 24): f16 ``d``, f16 ``m``, 32 high bits, nibbles; ``d * q + m``.
- ``Q8_0`` (32, 34): f16 ``d``, 32 int8; ``d * q``.
- ``Q2_K`` (256, 84): 16 bytes of 4-bit scale and min, 64 bytes of 2-bit codes, f16 ``d``,
  f16 ``dmin``; sub-blocks of 16: ``d * sc * q - dmin * m``.
- ``Q3_K`` (256, 110): 32 bytes of high bits, 64 bytes of 2-bit codes, 12 bytes of 6-bit
  scales, f16 ``d``; sub-blocks of 16: ``d * (sc - 32) * q`` with ``q`` in ``-4..3``.
- ``Q4_K`` (256, 144): f16 ``d``, f16 ``dmin``, 12 bytes of 6-bit scales and mins, 128 bytes of
  nibbles; sub-blocks of 32: ``d * sc * q - dmin * m``.
- ``Q5_K`` (256, 176): as Q4_K plus 32 bytes of high bits.
- ``Q6_K`` (256, 210): 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16
  ``d``; sub-blocks of 16: ``d * sc * (q - 32)``.

In a 4-bit block of 32 (Q4_0, Q4_1, Q5_*) byte ``i`` holds element ``i`` in its low nibble and
element ``i + 16`` in its high nibble; the K-quants' bit orders are spelled out in their readers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

__all__ = ["QUANT_TYPES", "QuantBlocks", "merge_rows", "read_blocks"]

F32 = np.float32
U8 = npt.NDArray[np.uint8]
Ints = npt.NDArray[Any]  # small integers on their way to uint8 codes
Q = GGMLQuantizationType


@dataclasses.dataclass(frozen=True)
class QuantBlocks:
    """A block-quantized matrix ``[rows, cols]``: value = ``d * (q - zero) + m`` per block.

    ``q`` holds codes ``[rows, cols // block, block]`` (``0..15`` for 4 bits, ``0..255`` for 8);
    ``d`` and ``m`` (``None``: no offset) are ``[rows, cols // block]`` float32.
    """

    q: U8
    d: npt.NDArray[np.float32]
    m: npt.NDArray[np.float32] | None
    bits: int
    block: int
    zero: int

    @property
    def cols(self) -> int:
        return int(self.q.shape[1] * self.block)

    def dequantize(self) -> npt.NDArray[np.float32]:
        rows = self.q.shape[0]
        values = (self.q.astype(F32) - F32(self.zero)) * self.d[..., None]
        if self.m is not None:
            values = values + self.m[..., None]
        return values.reshape(rows, self.cols)

    def take_rows(self, order: npt.NDArray[np.intp]) -> QuantBlocks:
        m = None if self.m is None else self.m[order]
        return dataclasses.replace(self, q=self.q[order], d=self.d[order], m=m)

    def offsets(self) -> npt.NDArray[np.float32]:
        """The offset of each block with zero folded in: value = ``d * q + offsets()``."""
        m = np.zeros_like(self.d) if self.m is None else self.m
        folded: npt.NDArray[np.float32] = (m - F32(self.zero) * self.d).astype(F32)
        return folded


def merge_rows(parts: list[QuantBlocks]) -> QuantBlocks:
    """The matrices of ``parts`` (same bits and block size) stacked along rows."""
    first = parts[0]
    if all(p.m is None and p.zero == first.zero for p in parts):
        m = None
        zero = first.zero
    else:
        m = np.concatenate([p.offsets() for p in parts])
        zero = 0
    return QuantBlocks(
        np.concatenate([p.q for p in parts]),
        np.concatenate([p.d for p in parts]),
        m,
        first.bits,
        first.block,
        zero,
    )


def _u8(codes: Ints) -> U8:
    return np.asarray(codes).astype(np.uint8, copy=False)


def _f16(raw: U8) -> npt.NDArray[np.float32]:
    """Two bytes per value along the last axis, as float32."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(F32)


def _nibbles(qs: Ints) -> Ints:
    """Bytes ``[.., 16]`` to 32 nibbles: low ones first, then high ones."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits(qh: Ints) -> Ints:
    """Four bytes ``[.., 4]`` (a little-endian uint32) to 32 bits, bit ``i`` for element ``i``."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _q4_0(blk: U8) -> QuantBlocks:
    return QuantBlocks(_u8(_nibbles(blk[..., 2:])), _f16(blk[..., 0:2]), None, 4, 32, 8)


def _q4_1(blk: U8) -> QuantBlocks:
    return QuantBlocks(
        _u8(_nibbles(blk[..., 4:])), _f16(blk[..., 0:2]), _f16(blk[..., 2:4]), 4, 32, 0
    )


def _q5_0(blk: U8) -> QuantBlocks:
    q = _nibbles(blk[..., 6:]) | (_high_bits(blk[..., 2:6]) << 4)
    # q - 16 == (q + 112) - 128: 8-bit codes with the default zero point.
    return QuantBlocks(_u8(q + 112), _f16(blk[..., 0:2]), None, 8, 32, 128)


def _q5_1(blk: U8) -> QuantBlocks:
    q = _nibbles(blk[..., 8:]) | (_high_bits(blk[..., 4:8]) << 4)
    return QuantBlocks(_u8(q), _f16(blk[..., 0:2]), _f16(blk[..., 2:4]), 8, 32, 0)


def _q8_0(blk: U8) -> QuantBlocks:
    # int8 q + 128, as a byte: the sign bit flipped (no wider copy of a big embedding).
    return QuantBlocks(blk[..., 2:] ^ np.uint8(0x80), _f16(blk[..., 0:2]), None, 8, 32, 128)


def _k_scale_min(scales: Ints) -> tuple[Ints, Ints]:
    """Q4_K/Q5_K's 12 bytes to 8 six-bit scales and 8 six-bit mins.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the high 2 bits of scales 4-7; bytes 4-7 the
    same for mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high).
    """
    d, m, m_d = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def _per_sub_block(
    scale: npt.NDArray[np.float32], small: npt.NDArray[np.integer[Any]]
) -> npt.NDArray[np.float32]:
    """``scale [..., 1]`` times each small integer ``[..., n]``: exact in float32."""
    product: npt.NDArray[np.float32] = scale[..., None] * small.astype(F32)
    return product


def _k_rows(
    rows: int, q: Ints, d: npt.NDArray[np.float32], m: npt.NDArray[np.float32] | None
) -> tuple[U8, npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """Super-block arrays ``[rows, supers, ...]`` flattened to sub-blocks per row."""
    block = 256 // d.shape[-1]
    return (
        q.reshape(rows, -1, block).astype(np.uint8, copy=False),
        d.reshape(rows, -1),
        None if m is None else m.reshape(rows, -1),
    )


def _q2_k(blk: U8) -> QuantBlocks:
    rows = blk.shape[0]
    scales, qs = blk[..., 0:16], blk[..., 16:80]
    d, dmin = _f16(blk[..., 80:82]), _f16(blk[..., 82:84])
    # Two halves of 128 values; in each, 32 bytes give four runs of 32 values (bits 0-1, 2-3, ...).
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    q = ((qs.reshape(*qs.shape[:-1], 2, 1, 32) >> shifts) & 3).reshape(*qs.shape[:-1], 256)
    dl = _per_sub_block(d, scales & 0x0F)
    ml = -_per_sub_block(dmin, scales >> 4)
    codes, dd, mm = _k_rows(rows, q, dl, ml)
    return QuantBlocks(codes, dd, mm, 4, 16, 0)


def _q3_k(blk: U8) -> QuantBlocks:
    rows = blk.shape[0]
    hmask, qs, packed, d = blk[..., 0:32], blk[..., 32:96], blk[..., 96:108], _f16(blk[..., 108:])
    # Scales 0-7 are the low nibbles of bytes 0-7, 8-15 their high nibbles; bytes 8-11 hold
    # each scale's top two bits, scales 0-3 in bits 0-1, 4-7 in bits 2-3, and so on.
    low_runs: Ints = packed[..., 0:8, None] >> np.array([0, 4], np.uint8)
    low = low_runs.swapaxes(-1, -2).reshape(*packed.shape[:-1], 16) & 0x0F
    high_runs: Ints = packed[..., 8:12, None] >> np.array([0, 2, 4, 6], np.uint8)
    high = high_runs.swapaxes(-1, -2).reshape(*packed.shape[:-1], 16) & 0x03
    sc = (low | (high << 4)).astype(np.int16) - 32
    shifts2 = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    ql = (qs.reshape(*qs.shape[:-1], 2, 1, 32) >> shifts2) & 3
    shifts8 = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qh = (hmask.reshape(*hmask.shape[:-1], 1, 32) >> shifts8) & 1
    # A clear high bit subtracts 4: q = ql - 4 * (1 - h) in -4..3; codes q + 8 for zero point 8.
    q = ql.reshape(*qs.shape[:-1], 256) + (qh.reshape(*qs.shape[:-1], 256) << 2) + np.uint8(4)
    dl = _per_sub_block(d, sc)
    codes, dd, _ = _k_rows(rows, q, dl, None)
    return QuantBlocks(codes, dd, None, 4, 16, 8)


def _q4_k(blk: U8) -> QuantBlocks:
    rows = blk.shape[0]
    d, dmin = _f16(blk[..., 0:2]), _f16(blk[..., 2:4])
    sc, mn = _k_scale_min(blk[..., 4:16])
    qs = blk[..., 16:144]
    # Four runs of 32 bytes; each gives 32 values from low nibbles, then 32 from high ones.
    q = _nibbles_runs(qs)
    codes, dd, mm = _k_rows(rows, q, _per_sub_block(d, sc), -_per_sub_block(dmin, mn))
    return QuantBlocks(codes, dd, mm, 4, 32, 0)


def _nibbles_runs(qs: Ints) -> Ints:
    """K-quant nibbles: each run of 32 bytes holds 32 values in low and 32 in high nibbles."""
    runs = qs.reshape(*qs.shape[:-1], -1, 1, 32) >> np.array([0, 4], np.uint8).reshape(2, 1)
    return (runs & 0x0F).reshape(*qs.shape[:-1], -1)


def _q5_k(blk: U8) -> QuantBlocks:
    rows = blk.shape[0]
    d, dmin = _f16(blk[..., 0:2]), _f16(blk[..., 2:4])
    sc, mn = _k_scale_min(blk[..., 4:16])
    qh, qs = blk[..., 16:48], blk[..., 48:176]
    high = (qh[..., None, :] >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & 1
    q = _nibbles_runs(qs) | (high.reshape(*qh.shape[:-1], 256) << 4)
    codes, dd, mm = _k_rows(rows, q, _per_sub_block(d, sc), -_per_sub_block(dmin, mn))
    return QuantBlocks(codes, dd, mm, 8, 32, 0)


def _q6_k(blk: U8) -> QuantBlocks:
    rows = blk.shape[0]
    ql, qh, scales, d = blk[..., 0:128], blk[..., 128:192], blk[..., 192:208], _f16(blk[..., 208:])
    # Two halves of 128 values: 64 bytes of low nibbles (two runs of 64) and 32 bytes of highs
    # (four runs of 32, bits 0-1, 2-3, 4-5, 6-7).
    low = (ql.reshape(*ql.shape[:-1], 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    high = (qh.reshape(*qh.shape[:-1], 2, 1, 32) >> shifts) & 3
    q6 = low.reshape(*ql.shape[:-1], 256) | (high.reshape(*ql.shape[:-1], 256) << 4)
    # q6 - 32 == (q6 + 96) - 128: 8-bit codes with the default zero point.
    dl = _per_sub_block(d, scales.view(np.int8))
    codes, dd, _ = _k_rows(rows, q6 + np.uint8(96), dl, None)
    return QuantBlocks(codes, dd, None, 8, 16, 128)


# Per type: (values per block, bytes per block, reader of blocks [rows, n, bytes]).
_READERS: dict[Q, tuple[int, int, Callable[[U8], QuantBlocks]]] = {
    Q.Q4_0: (32, 18, _q4_0),
    Q.Q4_1: (32, 20, _q4_1),
    Q.Q5_0: (32, 22, _q5_0),
    Q.Q5_1: (32, 24, _q5_1),
    Q.Q8_0: (32, 34, _q8_0),
    Q.Q2_K: (256, 84, _q2_k),
    Q.Q3_K: (256, 110, _q3_k),
    Q.Q4_K: (256, 144, _q4_k),
    Q.Q5_K: (256, 176, _q5_k),
    Q.Q6_K: (256, 210, _q6_k),
}
QUANT_TYPES = tuple(_READERS)


def read_blocks(kind: Q, raw: U8) -> QuantBlocks:
    """The blocks of a matrix stored as ``kind``, from its bytes ``[rows, bytes per row]``."""
    _, size, reader = _READERS[kind]
    rows = raw.shape[0]
    return reader(np.asarray(raw).reshape(rows, -1, size))
