"""The ONNX decoder graph of a GGUF decoder model, with a KV cache, in one of `PRECISIONS`.

- ``int4``: every quantized matrix keeps its GGUF codes (4- or 8-bit, see below), float32
  activations; the CPU's default.
- ``fp16``: the same packed weights with float16 activations and KV cache, the graph ONNX
  Runtime's CUDA kernels run (its ``GroupQueryAttention`` takes half precision only; its CPU
  provider runs every operator too). The residual stream, the RMS norms' inputs and the output
  projection stay float32 (see `_Builder.add_and_norm`), so logits are float32 as in the others.
- ``fp32``: the exact dequantized weights, float32 throughout; the reference.

Inputs (``B`` rows, ``S`` new tokens per row, ``C`` cache capacity = context length + 1; ``T``
is float16 in the fp16 graph, float32 otherwise)::

    input_ids              int64   [B, S]
    seqlens_k              int32   [B]        tokens in the row's cache after this step, minus 1
    total_sequence_length  int32   []         max over rows of (seqlens_k + 1)
    num_logits             int64   [1]        logits are returned for the last num_logits positions
    past_key.<i>           T       [B, Hkv, C, D]   for each layer i
    past_value.<i>         T       [B, Hkv, C, D]

Outputs::

    logits                 float32 [B, num_logits, vocab]
    present_key.<i>        T       [B, Hkv, C, D]
    present_value.<i>      T       [B, Hkv, C, D]

The cache is meant to be shared: bind the same buffer as ``past_*`` and ``present_*``; each step
writes the new keys and values at positions ``seqlens_k - S + 1 .. seqlens_k`` of each row and
reads nothing beyond them. A row's new tokens sit at those positions (rotary included); rows
with fewer than ``S`` new tokens are not supported (no padding), so batched steps use ``S = 1``.
A multi-token step on one row may start from an empty cache (``seqlens_k = S - 1``) or continue
what the row holds (a long prompt in pieces): the result is the same as in one step.

The block follows the model's `rbee.models.architectures.Architecture`. Operators:
``com.microsoft.GroupQueryAttention`` (rotate-half rotary built in, a sliding window where the
layer has one), ``SkipSimplifiedLayerNormalization`` (residual add + RMS norm), one matmul for
Q/K/V and one for gate/up. In the int4 and fp16 graphs every quantized matrix stays in its GGUF
codes in ``MatMulNBits`` (see `rbee.models.nbits`); parts of a fused matmul with different code
widths run as one node each. A quantized token table is looked up in those same codes by
``GatherBlockQuantized`` (``d * (q - zp)``, default zero points), plus each block's residual
``r`` where the type has an offset: its GGUF rows, in float32 in every graph (the residual
stream's type). A tied output projection reads the one initializer of codes the lookup reads.
The fp32 graph, and a float table in any graph, looks rows up in a float32 table. The
vocabulary's matrices, a model's biggest, are converted and written in runs of rows
(`_TABLE_ROWS`), never whole.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper

from rbee.models.gguf_file import GgufModel, unpermute_rows
from rbee.models.nbits import NBitsWeight, lookup_residual, stack_rows, to_nbits
from rbee.models.quants import QuantBlocks, merge_rows

__all__ = ["PRECISIONS", "build_graph", "cache_capacity", "graph_steps"]

PRECISIONS = ("int4", "fp32", "fp16")
# Precisions whose graphs keep quantized matrices in their GGUF codes.
_PACKED = ("int4", "fp16")
_F32 = np.dtype(np.float32)
_ALIGN = 4096
_INLINE_BYTES = 1024
# Rows of a float table converted and written at a time (bounded memory for big vocabularies).
_TABLE_ROWS = 8192
_OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
MS = "com.microsoft"
# MatMulNBits accuracy levels, measured on the default model (2 threads): level 0 keeps float32
# activations, so the 4-bit matmuls compute the GGUF's weights exactly (98.3% top-token agreement
# with fp32 on English text; level 4, int8 activations, was 30% faster but agreed on 95.5%).
# 8-bit matmuls (the output projection) have no fast float path: level 0 took ~70 ms a token
# for the output projection, level 4 ~1 ms.
ACCURACY_LEVEL = 0
EIGHT_BIT_ACCURACY = 4

Progress = Callable[[int, int], None]


def cache_capacity(context_length: int) -> int:
    """KV cache rows per sequence: the context plus one scratch row for idle batch rows."""
    return context_length + 1


class _Weights:
    """Initializers, written to one external data file as they are made (low peak memory)."""

    def __init__(self, data: BinaryIO, location: str) -> None:
        self._data = data
        self._location = location
        self.tensors: list[TensorProto] = []
        self._offset = 0

    def add(self, name: str, array: npt.NDArray[np.generic]) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes <= _INLINE_BYTES:
            self.tensors.append(onnx.numpy_helper.from_array(array, name))
            return name
        return self.add_rows(name, array.dtype, len(array), [array])

    def add_rows(
        self,
        name: str,
        dtype: np.dtype[Any],
        rows: int,
        chunks: Iterable[npt.NDArray[np.generic]],
    ) -> str:
        """An initializer of ``rows`` rows written as the consecutive runs of rows ``chunks``
        (its other dimensions theirs), so that no more than one run is in memory at a time."""
        pad = -self._offset % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            self._offset += pad
        nbytes = 0
        shape: tuple[int, ...] = (rows,)
        for chunk in chunks:
            shape = (rows, *chunk.shape[1:])
            # The buffer itself, not a copy: the largest tables are hundreds of MB.
            self._data.write(np.ascontiguousarray(chunk, dtype=dtype).data)
            nbytes += chunk.nbytes
        if nbytes != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"initializer {name}: {nbytes} bytes written for shape {shape}")
        tensor = TensorProto()
        tensor.name = name
        tensor.data_type = helper.np_dtype_to_tensor_dtype(dtype)
        tensor.dims.extend(shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self._location),
            ("offset", str(self._offset)),
            ("length", str(nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key = key
            entry.value = value
        self._offset += nbytes
        self.tensors.append(tensor)
        return name


@dataclasses.dataclass(frozen=True)
class _NBits:
    """One MatMulNBits weight as initializers: codes, scales and zero points (its ``inputs``
    after the activations), the residual ``[K/block, N]`` where it has one, and its shape."""

    inputs: tuple[str, ...]
    residual: str | None
    n: int
    k: int
    bits: int
    block: int


class _Builder:
    def __init__(self, model: GgufModel, precision: str, weights: _Weights) -> None:
        self.model = model
        self.h = model.hyper
        self.packed = precision in _PACKED
        self.activations: np.dtype[Any] = np.dtype(
            np.float16 if precision == "fp16" else np.float32
        )
        self.dtype = self.activations
        """The type of the float initializers made now (see `float32`)."""
        self.elem = helper.np_dtype_to_tensor_dtype(self.activations)
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._consts: dict[tuple[str, bytes], str] = {}
        self._rotary: dict[tuple[float, float], tuple[str, str]] = {}

    def node(
        self, op: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **kw: Any
    ) -> list[str]:
        domain = str(kw.pop("domain", ""))
        if isinstance(outputs, int):
            self._n += 1
            outs = [f"{op}_{self._n}_{i}" for i in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs, domain=domain, **kw))
        return outs

    def const(self, values: Sequence[int], dtype: type[np.generic] = np.int64) -> str:
        array = np.asarray(values, dtype=dtype)
        key = (str(array.dtype), array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.w.add(f"const_{len(self._consts)}", array)
        return self._consts[key]

    def floats(self, name: str, array: npt.NDArray[np.generic]) -> str:
        """A float initializer of the type being built (`dtype`)."""
        return self.w.add(name, array.astype(self.dtype, copy=False))

    def norm_weight(self, name: str) -> str:
        return self.floats(name, self.model.floats(name))

    def rms_norm(self, x: str, name: str) -> str:
        return self.node(
            "SimplifiedLayerNormalization",
            [x, self.norm_weight(name)],
            1,
            axis=-1,
            epsilon=self.h.rms_eps,
        )[0]

    def _rows(self, name: str, heads: int | None) -> QuantBlocks | npt.NDArray[np.float32]:
        """Matrix ``name`` as blocks (packed graph, quantized tensor) or floats, rows unpermuted."""
        if heads is not None and not self.model.arch.permuted_qk:
            heads = None
        if self.packed and self.model.is_quantized(name):
            blocks = self.model.blocks(name)
            return (
                blocks if heads is None else blocks.take_rows(unpermute_rows(len(blocks.q), heads))
            )
        dense = self.model.floats(name)
        return dense if heads is None else dense[unpermute_rows(len(dense), heads)]

    def linear(self, x: str, prefix: str, parts: Sequence[tuple[str, int | None]]) -> str:
        """``x @ W.T`` where W stacks the rows of ``parts`` (tensor name, heads to unpermute).

        Consecutive parts of one code width and block size share a node; the outputs of
        several nodes are concatenated.
        """
        groups: list[list[QuantBlocks | npt.NDArray[np.float32]]] = []
        for name, heads in parts:
            value = self._rows(name, heads)
            key = (value.bits, value.block) if isinstance(value, QuantBlocks) else None
            last = groups[-1][-1] if groups else None
            last_key = (last.bits, last.block) if isinstance(last, QuantBlocks) else None
            if groups and key == last_key:
                groups[-1].append(value)
            else:
                groups.append([value])
        outputs = []
        for j, group in enumerate(groups):
            name = prefix if len(groups) == 1 else f"{prefix}.{j}"
            blocks = [v for v in group if isinstance(v, QuantBlocks)]
            if blocks:
                outputs.append(self.nbits_matmul(x, name, merge_rows(blocks)))
            else:
                dense = np.concatenate([v for v in group if not isinstance(v, QuantBlocks)])
                weight = self.floats(name, np.ascontiguousarray(dense.T))
                outputs.append(self.node("MatMul", [x, weight])[0])
        if len(outputs) == 1:
            return outputs[0]
        return self.node("Concat", outputs, axis=-1)[0]

    def accuracy_level(self, bits: int) -> int:
        """MatMulNBits' accuracy level for ``bits``-bit codes in the block being built.

        Half-precision blocks keep 8-bit matmuls exact too: int8 activations there cost Gemma 3
        270M's fp16 graph 3 points of top-token agreement with fp32 (95.5% instead of 98.3%),
        and ONNX Runtime's CUDA kernels, which the fp16 graph is for, have no such mode.
        """
        if bits == 4 or self.dtype != _F32:
            return ACCURACY_LEVEL
        return EIGHT_BIT_ACCURACY

    def nbits_matmul(self, x: str, prefix: str, blocks: QuantBlocks) -> str:
        nb = to_nbits(blocks)
        qweight = self.w.add(prefix + ".qweight", nb.packed)
        return self.nbits_node(x, self.nbits_inputs(prefix, qweight, nb))

    def nbits_inputs(self, prefix: str, qweight: str, nb: NBitsWeight) -> _NBits:
        """MatMulNBits' initializers for the weight ``nb`` whose codes are the initializer
        ``qweight`` (``nb.packed`` is not read): its scales, zero points and residual are
        written here."""
        inputs = [qweight, self.floats(prefix + ".scales", nb.scales)]
        if nb.zero_points is not None:
            inputs.append(self.w.add(prefix + ".zero_points", nb.zero_points))
        residual = None
        if nb.residual is not None:
            residual = self.floats(prefix + ".residual", nb.residual)
        return _NBits(tuple(inputs), residual, nb.n, nb.k, nb.bits, nb.block)

    def nbits_node(self, x: str, weight: _NBits) -> str:
        """``x @ W.T`` in MatMulNBits, plus the residual's correction where ``W`` has one."""
        y = self.node(
            "MatMulNBits",
            [x, *weight.inputs],
            domain=MS,
            K=weight.k,
            N=weight.n,
            bits=weight.bits,
            block_size=weight.block,
            accuracy_level=self.accuracy_level(weight.bits),
        )[0]
        if weight.residual is None:
            return y
        per_block = self.const([0, 0, weight.k // weight.block, weight.block])
        blocks_of_x = self.node("Reshape", [x, per_block])[0]
        sums = self.node("ReduceSum", [blocks_of_x, self.const([-1])], keepdims=0)[0]
        correction = self.node("MatMul", [sums, weight.residual])[0]
        return self.node("Add", [y, correction])[0]

    @contextmanager
    def float32(self) -> Iterator[None]:
        """Build the nodes of the block in float32, whatever the graph's activation type."""
        outer, self.dtype = self.dtype, _F32
        try:
            yield
        finally:
            self.dtype = outer

    def convert(self, x: str, source: np.dtype[Any], target: np.dtype[Any]) -> str:
        """``x`` of type ``source`` as ``target`` (itself when they are the same)."""
        if source == target:
            return x
        return self.node("Cast", [x], to=helper.np_dtype_to_tensor_dtype(target))[0]

    def embedding(self, ids: str) -> tuple[str, Callable[[str], str]]:
        """The embedding lookup of ``ids`` as ``embedded``, float32 in every graph (the residual
        stream's type), and a function computing logits from float32 hidden states, called
        within `float32`."""
        name = "token_embd.weight"
        tied = not self.model.has("output.weight")
        with self.float32():
            if self.packed and self.model.is_quantized(name):
                qweight, nb, residual = self.packed_rows(name, "token_embd", lookup=True)
                embedded = self.packed_lookup(ids, qweight, nb, residual)
                if not tied:
                    return embedded, self.output_head("output.weight")
                # The head's own initializers now, rather than the table's layout kept to the end.
                weight = self.nbits_inputs("output", qweight, nb)
                return embedded, lambda x: self.nbits_node(x, weight)
            table = self.float_table(name)
            embedded = self.node("Gather", [table, ids], ["embedded"], axis=0)[0]
        if not tied:
            return embedded, self.output_head("output.weight")
        return embedded, lambda x: self.table_head(x, table)

    def packed_lookup(
        self,
        ids: str,
        qweight: str,
        nb: NBitsWeight,
        residual: npt.NDArray[np.float32] | None,
    ) -> str:
        """Rows ``ids`` of the weight ``nb`` whose codes are the initializer ``qweight``, as
        float32: ``d * (q - zp)`` by GatherBlockQuantized with the default zero points, plus
        each block's ``residual`` ``[N, K/block]`` (see `lookup_residual`).

        Scales and residual are tables of their own, laid out as the lookup reads them: a
        row's are contiguous, where the output projection's residual would spread a token's
        over ``K/block`` pages of the mapped file."""
        blocks = nb.k // nb.block
        scales = self.floats("token_embd.scales", nb.scales.reshape(nb.n, blocks, 1))
        looked_up = self.node(
            "GatherBlockQuantized",
            [qweight, ids, scales],
            domain=MS,
            bits=nb.bits,
            block_size=nb.block,
            gather_axis=0,
            quantize_axis=2,
        )[0]
        if residual is not None:
            table = self.floats("token_embd.residual", residual)
            per_block = self.node("Gather", [table, ids], axis=0)[0]
            broadcast = self.node("Unsqueeze", [per_block, self.const([-1])])[0]
            looked_up = self.node("Add", [looked_up, broadcast])[0]
        return self.node("Reshape", [looked_up, self.const([0, 0, nb.k])], ["embedded"])[0]

    def output_head(self, name: str) -> Callable[[str], str]:
        """The output projection onto matrix ``name`` ``[vocab, hidden]``, converted in runs of
        rows (a vocabulary's matrix is a model's biggest): its GGUF codes in MatMulNBits where
        the graph keeps them, else a float table."""
        if self.packed and self.model.is_quantized(name):
            return lambda x: self.nbits_head(x, name)
        return lambda x: self.table_head(x, self.float_table(name))

    def nbits_head(self, x: str, name: str) -> str:
        """``x @ W.T`` in MatMulNBits for quantized matrix ``name``."""
        qweight, nb, _ = self.packed_rows(name, "output")
        return self.nbits_node(x, self.nbits_inputs("output", qweight, nb))

    def packed_rows(
        self, name: str, prefix: str, lookup: bool = False
    ) -> tuple[str, NBitsWeight, npt.NDArray[np.float32] | None]:
        """Quantized matrix ``name``'s MatMulNBits codes as the initializer ``prefix.qweight``,
        each run of rows written as it is converted; the rest of its layout (scales, zero
        points, residual: a few bytes a block), as `to_nbits` of the whole matrix makes them;
        and with ``lookup`` its `lookup_residual`."""
        rows = self.model.rows(name)
        runs: list[NBitsWeight] = []
        residuals: list[npt.NDArray[np.float32]] = []

        def codes() -> Iterator[npt.NDArray[np.uint8]]:
            for start in range(0, rows, _TABLE_ROWS):
                blocks = self.model.blocks(name, start, start + _TABLE_ROWS)
                residual = lookup_residual(blocks) if lookup else None
                if residual is not None:
                    residuals.append(residual)
                nb = to_nbits(blocks)
                runs.append(nb.without_codes())
                yield nb.packed

        qweight = self.w.add_rows(prefix + ".qweight", np.dtype(np.uint8), rows, codes())
        return qweight, stack_rows(runs), np.concatenate(residuals) if residuals else None

    def float_table(self, name: str) -> str:
        """Matrix ``name`` ``[rows, cols]`` as an initializer of the type being built, converted
        in runs of rows."""
        rows = self.model.rows(name)

        def chunks() -> Iterator[npt.NDArray[np.generic]]:
            for start in range(0, rows, _TABLE_ROWS):
                yield self.model.floats(name, start, start + _TABLE_ROWS).astype(self.dtype)

        return self.w.add_rows(name, self.dtype, rows, chunks())

    def table_head(self, x: str, table: str) -> str:
        """Logits from a ``[vocab, hidden]`` float table, read transposed in place by Gemm."""
        h = self.h
        flat = self.node("Reshape", [x, self.const([-1, h.hidden])])[0]
        logits = self.node("Gemm", [flat, table], transB=1)[0]
        shape = self.node("Shape", [x], start=0, end=2)[0]
        full = self.node("Concat", [shape, self.const([h.vocab_size])], axis=0)[0]
        return self.node("Reshape", [logits, full])[0]

    def rotary_tables(self, capacity: int, base: float, scale: float) -> tuple[str, str]:
        """cos/sin ``[capacity, D/2]`` for a rotary base; positions divided by ``scale``."""
        key = (base, scale)
        if key not in self._rotary:
            d = self.h.head_dim
            inv = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
            angles = np.outer(np.arange(capacity, dtype=np.float64) / scale, inv)
            suffix = "" if not self._rotary else f".{len(self._rotary)}"
            self._rotary[key] = (
                self.floats("rotary.cos" + suffix, np.cos(angles)),
                self.floats("rotary.sin" + suffix, np.sin(angles)),
            )
        return self._rotary[key]

    def activation(self, gate: str) -> str:
        if self.model.arch.activation == "gelu_tanh":
            return self.node("Gelu", [gate], approximate="tanh")[0]
        return self.node("Mul", [gate, self.node("Sigmoid", [gate])[0]])[0]

    def attention_inputs(self, normed: str, b: str) -> list[str]:
        """GroupQueryAttention's query, key and value inputs: fused QKV where the block allows."""
        h, arch = self.h, self.model.arch
        heads = {"attn_q": h.heads, "attn_k": h.kv_heads}
        qkv = self.linear(
            normed, b + "attn_qkv", [(b + f"{name}.weight", heads.get(name)) for name in arch.qkv]
        )
        biases = [b + f"{name}.bias" for name in arch.qkv]
        if self.model.has(biases[0]):
            bias = np.concatenate([self.model.floats(name) for name in biases])
            qkv = self.node("Add", [qkv, self.floats(b + "attn_qkv.bias", bias)])[0]
        if not arch.qk_norm:
            return [qkv, "", ""]
        q_size, kv_size = h.heads * h.head_dim, h.kv_heads * h.head_dim
        q, k, v = self.node("Split", [qkv, self.const([q_size, kv_size, kv_size])], 3, axis=-1)
        per_head = self.const([0, 0, -1, h.head_dim])
        normed_q, normed_k = (
            self.node(
                "Reshape",
                [self.rms_norm(self.node("Reshape", [t, per_head])[0], b + f"{n}.weight"), flat],
            )[0]
            for t, n, flat in (
                (q, "attn_q_norm", self.const([0, 0, q_size])),
                (k, "attn_k_norm", self.const([0, 0, kv_size])),
            )
        )
        return [normed_q, normed_k, v]

    def add_and_norm(self, block: str | None, residual: str, weight: str) -> tuple[str, str]:
        """The residual stream plus a block's output (``None``: none yet), and its RMS norm
        scaled by ``weight``: ``(normed, residual)``; ``block`` is in the activation type.

        The residual stream is float32 in every graph, the norm's input too: in half precision
        Gemma 3's stream (values past 30000) lost the small updates of later layers (on English
        text, 95.5% top-token agreement with fp32 instead of 97.9%). ``normed`` is of the type
        being built (`dtype`).
        """
        with self.float32():
            if block is None:
                normed = self.rms_norm(residual, weight)
            else:
                normed, _, _, residual = self.node(
                    "SkipSimplifiedLayerNormalization",
                    [
                        self.convert(block, self.activations, _F32),
                        residual,
                        self.norm_weight(weight),
                    ],
                    4,
                    domain=MS,
                    epsilon=self.h.rms_eps,
                )
        return self.convert(normed, _F32, self.dtype), residual

    def build(self, progress: Callable[[], None]) -> onnx.GraphProto:
        h, arch = self.h, self.model.arch
        capacity = cache_capacity(h.context_length)
        x, head = self.embedding("input_ids")
        if arch.scale_embedding:
            factor = self.w.add("embedding_scale", np.array(math.sqrt(h.hidden), np.float32))
            x = self.node("Mul", [x, factor])[0]
        progress()
        cache_shape: list[str | int] = ["batch", h.kv_heads, "capacity", h.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info("num_logits", TensorProto.INT64, [1]),
        ]
        outputs = [
            helper.make_tensor_value_info(
                "logits", TensorProto.FLOAT, ["batch", "num_logits", h.vocab_size]
            )
        ]
        residual = x
        pending: str | None = None
        for i in range(h.layers):
            b = f"blk.{i}."
            normed, residual = self.add_and_norm(pending, residual, b + "attn_norm.weight")
            for kind in ("key", "value"):
                inputs.append(
                    helper.make_tensor_value_info(f"past_{kind}.{i}", self.elem, cache_shape)
                )
                outputs.append(
                    helper.make_tensor_value_info(f"present_{kind}.{i}", self.elem, cache_shape)
                )
            local = arch.is_local(i, h.sliding_window)
            if local:
                cos, sin = self.rotary_tables(capacity, arch.local_rope_base or h.rope_base, 1.0)
            else:
                cos, sin = self.rotary_tables(capacity, h.rope_base, h.rope_scale)
            extra: dict[str, Any] = {}
            if local:
                # Both count the query itself: a window of n sees positions p - n + 1 .. p.
                extra["local_window_size"] = h.sliding_window
            if h.attn_softcap:
                extra["softcap"] = h.attn_softcap
            attended = self.node(
                "GroupQueryAttention",
                [
                    *self.attention_inputs(normed, b),
                    f"past_key.{i}",
                    f"past_value.{i}",
                    "seqlens_k",
                    "total_sequence_length",
                    cos,
                    sin,
                ],
                ["attn_out." + str(i), f"present_key.{i}", f"present_value.{i}"],
                domain=MS,
                num_heads=h.heads,
                kv_num_heads=h.kv_heads,
                do_rotary=1,
                rotary_interleaved=0,
                scale=1.0 / math.sqrt(h.head_dim),
                **extra,
            )[0]
            projected = self.linear(attended, b + "attn_output", [(b + "attn_output.weight", None)])
            if arch.post_norms:
                projected = self.rms_norm(projected, b + "post_attention_norm.weight")
            normed, residual = self.add_and_norm(projected, residual, b + "ffn_norm.weight")
            gate_up = self.linear(
                normed, b + "ffn_gate_up", [(b + f"{name}.weight", None) for name in arch.gate_up]
            )
            gate, up = self.node("Split", [gate_up, self.const([h.ffn, h.ffn])], 2, axis=-1)
            pending = self.linear(
                self.node("Mul", [self.activation(gate), up])[0],
                b + "ffn_down",
                [(b + "ffn_down.weight", None)],
            )
            if arch.post_norms:
                pending = self.rms_norm(pending, b + "post_ffw_norm.weight")
            progress()
        with self.float32():
            final, _ = self.add_and_norm(pending, residual, "output_norm.weight")
            start = self.node("Neg", ["num_logits"])[0]
            last = self.node(
                "Slice", [final, start, self.const([np.iinfo(np.int64).max]), self.const([1])]
            )[0]
            logits = head(last)
        if h.final_softcap:
            cap = self.w.add("final_softcap", np.array(h.final_softcap, np.float32))
            capped = self.node("Tanh", [self.node("Div", [logits, cap])[0]])[0]
            logits = self.node("Mul", [capped, cap])[0]
        self.node("Identity", [logits], ["logits"])
        progress()
        return helper.make_graph(self.nodes, "rbee-decoder", inputs, outputs, self.w.tensors)


def graph_steps(model: GgufModel) -> int:
    """How many progress steps `build_graph` reports."""
    return model.hyper.layers + 2


def build_graph(
    model: GgufModel, precision: str, directory: Path, progress: Callable[[], None]
) -> list[str]:
    """Write ``model.<precision>.onnx`` and its ``.data`` file into ``directory``.

    Calls ``progress()`` once per step (`graph_steps`); returns the names of the files written.
    """
    onnx_name = f"model.{precision}.onnx"
    data_name = onnx_name + ".data"
    with (directory / data_name).open("wb") as data:
        weights = _Weights(data, data_name)
        graph = _Builder(model, precision, weights).build(progress)
    proto = helper.make_model(graph, opset_imports=_OPSETS, producer_name="rbee")
    proto.ir_version = 10
    (directory / onnx_name).write_bytes(proto.SerializeToString())
    return [onnx_name, data_name]
