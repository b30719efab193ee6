"""Reading a llama-architecture GGUF file: validation, hyperparameters and quantized blocks.

`open_gguf` checks everything an import needs before any conversion starts (magic, complete
tensor data, architecture, tensor types, hyperparameters), so a bad file fails fast with one
`ModelError` and nothing is written. Tensors stay memory-mapped; `QuantBlocks` and `dequantize`
read them one matrix at a time.

GGUF stores a ``[rows, cols]`` matrix (``rows`` output features) as ``rows`` runs of blocks of 32
values along ``cols``. The block formats used here:

- ``Q4_0``: f16 ``d``, 16 bytes of 4-bit codes; value ``d * (q - 8)``.
- ``Q4_1``: f16 ``d``, f16 ``m``, 16 bytes of 4-bit codes; value ``d * q + m``.
- ``Q8_0``: f16 ``d``, 32 signed bytes; value ``d * q``.

In a 4-bit block byte ``i`` holds element ``i`` in its low nibble and element ``i + 16`` in its
high nibble.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFReader

from rbee.errors import ModelError

__all__ = [
    "BLOCK",
    "MATRIX_TYPES",
    "GgufModel",
    "Hyper",
    "QuantBlocks",
    "dequantize",
    "open_gguf",
    "unpermute_rows",
]

BLOCK = 32
F32 = np.float32
Q = GGMLQuantizationType
MATRIX_TYPES = (Q.F32, Q.F16, Q.Q4_0, Q.Q4_1, Q.Q8_0)
_NORM_TYPES = (Q.F32, Q.F16)
SUPPORTED_ARCHITECTURES = ("llama",)


@dataclasses.dataclass(frozen=True)
class Hyper:
    """The hyperparameters of a llama-style decoder."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    vocab_size: int
    rope_base: float
    rms_eps: float


@dataclasses.dataclass(frozen=True)
class QuantBlocks:
    """A block-quantized matrix ``[rows, cols]`` as arrays: value = ``d * q + m`` per block.

    ``q`` holds codes ``[rows, cols // 32, 32]`` (unsigned, ``0..15`` for 4 bits, ``0..255`` for
    8 bits with ``m = -128 * d``); ``d`` and ``m`` are ``[rows, cols // 32]`` float32.
    """

    q: npt.NDArray[np.uint8]
    d: npt.NDArray[np.float32]
    m: npt.NDArray[np.float32]
    bits: int

    def dequantize(self) -> npt.NDArray[np.float32]:
        rows, blocks, _ = self.q.shape
        values = self.q.astype(F32) * self.d[..., None] + self.m[..., None]
        return values.reshape(rows, blocks * BLOCK)

    def take_rows(self, order: npt.NDArray[np.intp]) -> QuantBlocks:
        return QuantBlocks(self.q[order], self.d[order], self.m[order], self.bits)


class GgufModel:
    """An opened, validated GGUF file of a supported architecture."""

    def __init__(self, path: Path, reader: GGUFReader, hyper: Hyper) -> None:
        self.path = path
        self.reader = reader
        self.hyper = hyper
        self._tensors = {t.name: t for t in reader.tensors}

    def field(self, key: str, default: Any = None) -> Any:
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType(self._tensors[name].tensor_type)

    def blocks(self, name: str) -> QuantBlocks:
        """The blocks of a quantized matrix (``ModelError`` if it is stored as plain floats)."""
        tensor = self._tensors[name]
        kind = GGMLQuantizationType(tensor.tensor_type)
        raw = np.asarray(tensor.data)
        rows = raw.shape[0]
        if kind == Q.Q4_1:
            blk = raw.reshape(rows, -1, 20)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
            m = blk[..., 2:4].copy().view(np.float16)[..., 0].astype(F32)
            q = _unpack_nibbles(blk[..., 4:])
            return QuantBlocks(q, d, m, 4)
        if kind == Q.Q4_0:
            blk = raw.reshape(rows, -1, 18)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
            return QuantBlocks(_unpack_nibbles(blk[..., 2:]), d, -8 * d, 4)
        if kind == Q.Q8_0:
            blk = raw.reshape(rows, -1, 34)
            d = blk[..., 0:2].copy().view(np.float16)[..., 0].astype(F32)
            q = (blk[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
            return QuantBlocks(q, d, -128 * d, 8)
        raise ModelError(f"{self.path}: tensor {name} is {kind.name}, not block-quantized")

    def floats(self, name: str) -> npt.NDArray[np.float32]:
        """Any supported tensor as float32, matrices as ``[rows, cols]``."""
        tensor = self._tensors[name]
        kind = GGMLQuantizationType(tensor.tensor_type)
        if kind in (Q.F32, Q.F16):
            return np.asarray(tensor.data).astype(F32)
        return self.blocks(name).dequantize()


def _unpack_nibbles(qs: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def dequantize(model: GgufModel, name: str) -> npt.NDArray[np.float32]:
    """Tensor ``name`` as float32 (the exact values the quantized blocks encode)."""
    return model.floats(name)


def unpermute_rows(rows: int, heads: int) -> npt.NDArray[np.intp]:
    """The row order that undoes llama.cpp's Q/K permutation (back to rotate-half layout).

    llama.cpp's converter regroups each head's rows so that the two rotary halves interleave;
    row ``order[i]`` of the GGUF matrix is row ``i`` of the original one.
    """
    head_dim = rows // heads
    gguf_index = np.arange(rows).reshape(heads, head_dim // 2, 2)
    return np.ascontiguousarray(gguf_index.swapaxes(1, 2)).reshape(rows)


def _open_reader(path: Path) -> GGUFReader:
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror or err}") from None
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as err:
        raise ModelError(f"{path} is a damaged or truncated GGUF file ({err})") from None


def _check_extents(path: Path, reader: GGUFReader) -> None:
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size or np.asarray(tensor.data).nbytes != int(tensor.n_bytes):
            raise ModelError(
                f"{path} is truncated: tensor {tensor.name} needs bytes up to {end} "
                f"but the file has {size}"
            )


def _hyper(path: Path, reader: GGUFReader, arch: str) -> Hyper:
    def get(key: str, default: Any = None) -> Any:
        field = reader.get_field(f"{arch}.{key}")
        if field is None:
            if default is None:
                raise ModelError(f"{path}: metadata key {arch}.{key} is missing")
            return default
        return field.contents()

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    tokens = reader.get_field("tokenizer.ggml.tokens")
    vocab = int(get("vocab_size", len(tokens.data) if tokens is not None else 0))
    hyper = Hyper(
        layers=int(get("block_count")),
        hidden=hidden,
        ffn=int(get("feed_forward_length")),
        heads=heads,
        kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=hidden // heads if heads else 0,
        context_length=int(get("context_length")),
        vocab_size=vocab,
        rope_base=float(get("rope.freq_base", 10000.0)),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
    )
    rope_dims = int(get("rope.dimension_count", hyper.head_dim))
    scaling = reader.get_field(f"{arch}.rope.scaling.type")
    if (
        hidden % heads
        or heads % hyper.kv_heads
        or hidden % BLOCK
        or hyper.ffn % BLOCK
        or rope_dims != hyper.head_dim
        or hyper.head_dim % 2
        or not vocab
        or (scaling is not None and scaling.contents() not in ("none", ""))
    ):
        raise ModelError(f"{path}: unsupported {arch} hyperparameters {hyper}")
    return hyper


def _check_tensors(path: Path, model: GgufModel) -> None:
    h = model.hyper
    expected: dict[str, tuple[tuple[Q, ...], tuple[int, ...]]] = {
        "token_embd.weight": (MATRIX_TYPES, (h.vocab_size, h.hidden)),
        "output_norm.weight": (_NORM_TYPES, (h.hidden,)),
    }
    if model.has("output.weight"):
        expected["output.weight"] = (MATRIX_TYPES, (h.vocab_size, h.hidden))
    q_rows, kv_rows = h.heads * h.head_dim, h.kv_heads * h.head_dim
    for i in range(h.layers):
        b = f"blk.{i}."
        expected |= {
            b + "attn_norm.weight": (_NORM_TYPES, (h.hidden,)),
            b + "ffn_norm.weight": (_NORM_TYPES, (h.hidden,)),
            b + "attn_q.weight": (MATRIX_TYPES, (q_rows, h.hidden)),
            b + "attn_k.weight": (MATRIX_TYPES, (kv_rows, h.hidden)),
            b + "attn_v.weight": (MATRIX_TYPES, (kv_rows, h.hidden)),
            b + "attn_output.weight": (MATRIX_TYPES, (h.hidden, q_rows)),
            b + "ffn_gate.weight": (MATRIX_TYPES, (h.ffn, h.hidden)),
            b + "ffn_up.weight": (MATRIX_TYPES, (h.ffn, h.hidden)),
            b + "ffn_down.weight": (MATRIX_TYPES, (h.hidden, h.ffn)),
        }
    for name, (types, shape) in expected.items():
        if not model.has(name):
            raise ModelError(f"{path}: tensor {name} is missing")
        tensor = model._tensors[name]
        try:
            kind = GGMLQuantizationType(tensor.tensor_type)
        except ValueError:
            kind = None
        if kind not in types:
            found = kind.name if kind is not None else f"type {int(tensor.tensor_type)}"
            raise ModelError(
                f"{path}: tensor {name} has unsupported type {found} "
                f"(supported: {', '.join(t.name for t in types)})"
            )
        # GGUF lists dimensions fastest-first.
        got = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if got != shape:
            raise ModelError(f"{path}: tensor {name} has shape {got}, expected {shape}")


def open_gguf(path: Path) -> GgufModel:
    """Open and validate ``path``; `ModelError` says exactly what is wrong with a bad file."""
    reader = _open_reader(path)
    _check_extents(path, reader)
    field = reader.get_field("general.architecture")
    if field is None:
        raise ModelError(f"{path}: metadata key general.architecture is missing")
    arch = str(field.contents())
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(
            f"{path}: unsupported architecture {arch!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    model = GgufModel(path, reader, _hyper(path, reader, arch))
    _check_tensors(path, model)
    return model
