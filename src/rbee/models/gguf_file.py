"""Reading a GGUF decoder file: validation, hyperparameters and quantized blocks.

`open_gguf` checks everything an import needs before any conversion starts (magic, complete
tensor data, architecture, tensor types, hyperparameters), so a bad file fails fast with one
`ModelError` and nothing is written. Tensors stay memory-mapped; `GgufModel.blocks` and
`GgufModel.floats` read them one matrix (or run of rows) at a time and give the mapped pages back
to the kernel as they go, so an import's resident memory stays about one matrix, whatever the
file's size. The block types are `rbee.models.quants`';
the architectures `rbee.models.architectures`'.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFReader

from rbee.errors import ModelError
from rbee.models.architectures import ARCHITECTURES, Architecture
from rbee.models.quants import QUANT_TYPES, QuantBlocks, read_blocks

__all__ = [
    "FLOAT_TYPES",
    "MATRIX_TYPES",
    "GgufModel",
    "Hyper",
    "dequantize",
    "open_gguf",
    "unpermute_rows",
]

F32 = np.float32
Q = GGMLQuantizationType
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
MATRIX_TYPES = FLOAT_TYPES + QUANT_TYPES


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
    rope_scale: float = 1.0
    """Linear rotary scaling of the global layers: positions are divided by it."""
    sliding_window: int = 0
    """Tokens a sliding-window layer sees, itself included (0: none)."""
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    """Soft-capping ``c * tanh(x / c)`` of attention scores and of the logits (0: none)."""


class GgufModel:
    """An opened, validated GGUF file of a supported architecture."""

    def __init__(self, path: Path, reader: GGUFReader, arch: Architecture, hyper: Hyper) -> None:
        self.path = path
        self.reader = reader
        self.arch = arch
        self.hyper = hyper
        self._tensors = {t.name: t for t in reader.tensors}

    def field(self, key: str, default: Any = None) -> Any:
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def has(self, name: str) -> bool:
        return name in self._tensors

    def tensor_type(self, name: str) -> GGMLQuantizationType:
        return GGMLQuantizationType(self._tensors[name].tensor_type)

    def is_quantized(self, name: str) -> bool:
        return self.tensor_type(name) in QUANT_TYPES

    def rows(self, name: str) -> int:
        return int(np.asarray(self._tensors[name].data).shape[0])

    def blocks(self, name: str, start: int = 0, stop: int | None = None) -> QuantBlocks:
        """The blocks of a quantized matrix, or of rows ``start:stop`` of it (``ModelError``
        if it is stored as plain floats)."""
        kind = self.tensor_type(name)
        if kind not in QUANT_TYPES:
            raise ModelError(f"{self.path}: tensor {name} is {kind.name}, not block-quantized")
        blocks = read_blocks(kind, np.asarray(self._tensors[name].data)[start:stop])
        self._release(name)
        return blocks

    def floats(self, name: str, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float32]:
        """Any supported tensor (or rows ``start:stop`` of a matrix) as float32, matrices as
        ``[rows, cols]``."""
        kind = self.tensor_type(name)
        if kind in QUANT_TYPES:
            return self.blocks(name, start, stop).dequantize()
        raw = np.asarray(self._tensors[name].data)[start:stop]
        if kind == Q.BF16:
            values = (raw.view(np.uint16).astype(np.uint32) << 16).view(F32)
        else:
            values = raw.astype(F32)
        self._release(name)
        return values

    def _release(self, name: str) -> None:
        """Drop the mapped pages of tensor ``name`` from this process's resident memory.

        What was read is a copy by now; the pages stay in the page cache, so a second read
        costs no disk access.
        """
        tensor = self._tensors[name]
        memory = getattr(self.reader.data, "_mmap", None)
        if memory is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = int(tensor.data_offset) // mmap.PAGESIZE * mmap.PAGESIZE
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        memory.madvise(mmap.MADV_DONTNEED, start, end - start)


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
    head_dim = int(get("attention.key_length", hidden // heads if heads else 0))
    scaling = str(get("rope.scaling.type", "none"))
    hyper = Hyper(
        layers=int(get("block_count")),
        hidden=hidden,
        ffn=int(get("feed_forward_length")),
        heads=heads,
        kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        context_length=int(get("context_length")),
        vocab_size=vocab,
        rope_base=float(get("rope.freq_base", 10000.0)),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_scale=float(get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0,
        sliding_window=int(get("attention.sliding_window", 0)),
        attn_softcap=float(get("attn_logit_softcapping", 0.0)),
        final_softcap=float(get("final_logit_softcapping", 0.0)),
    )
    rope_dims = int(get("rope.dimension_count", head_dim))
    if (
        not heads
        or heads % hyper.kv_heads
        or int(get("attention.value_length", head_dim)) != head_dim
        or rope_dims != head_dim
        or head_dim % 2
        or not vocab
        or scaling not in ("none", "", "linear")
        or not math.isfinite(hyper.rope_scale)
        or hyper.rope_scale <= 0
    ):
        raise ModelError(f"{path}: unsupported {arch} hyperparameters {hyper}")
    return hyper


def _expected_tensors(model: GgufModel) -> dict[str, tuple[tuple[Q, ...], tuple[int, ...]]]:
    """Each tensor the architecture needs: the types it may have and its shape."""
    h, arch = model.hyper, model.arch
    expected: dict[str, tuple[tuple[Q, ...], tuple[int, ...]]] = {
        "token_embd.weight": (MATRIX_TYPES, (h.vocab_size, h.hidden)),
        "output_norm.weight": (FLOAT_TYPES, (h.hidden,)),
    }
    if model.has("output.weight"):
        expected["output.weight"] = (MATRIX_TYPES, (h.vocab_size, h.hidden))
    q_rows, kv_rows = h.heads * h.head_dim, h.kv_heads * h.head_dim
    matrices = arch.block_matrices(q_rows, kv_rows, h.hidden, h.ffn)
    for i in range(h.layers):
        b = f"blk.{i}."
        expected |= {
            b + f"{norm}.weight": (FLOAT_TYPES, (h.hidden,)) for norm in arch.block_norms()
        }
        expected |= {
            b + f"{name}.weight": (MATRIX_TYPES, shape) for name, shape in matrices.items()
        }
        for name in arch.qkv:
            if arch.qkv_bias or model.has(b + f"{name}.bias"):
                expected[b + f"{name}.bias"] = (FLOAT_TYPES, matrices[name][:1])
        if arch.qk_norm:
            expected[b + "attn_q_norm.weight"] = (FLOAT_TYPES, (h.head_dim,))
            expected[b + "attn_k_norm.weight"] = (FLOAT_TYPES, (h.head_dim,))
    return expected


def _check_tensors(path: Path, model: GgufModel) -> None:
    for name in model.arch.refused_tensors:
        if model.has(name):
            raise ModelError(
                f"{path}: tensor {name} is not supported in {model.arch.name} models "
                "(rbee builds them without rotary scaling factors)"
            )
    for name, (types, shape) in _expected_tensors(model).items():
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
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"{path}: unsupported architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})"
        )
    model = GgufModel(path, reader, ARCHITECTURES[arch], _hyper(path, reader, arch))
    _check_tensors(path, model)
    return model
