"""The token table's lookup and a tied output projection, for every block type: in the packed
graphs from the table's own codes (``GatherBlockQuantized``, one copy of the codes shared with
the head), in fp32 from a float table; rows checked against the ``gguf`` package's own
dequantization, logits against the numpy forward pass."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType, GGUFReader, quants

from rbee.models.gguf_file import GgufModel, open_gguf
from rbee.models.graph import PRECISIONS, build_graph, cache_capacity
from rbee.models.quants import QUANT_TYPES
from tests.models.helpers import Synthetic, numpy_forward, write_synthetic_gguf

F32 = np.float32
Q = GGMLQuantizationType
# Types stored as d * q + m: the graph adds a float32 residual to GatherBlockQuantized's rows.
WITH_OFFSETS = (Q.Q4_1, Q.Q5_1, Q.Q2_K, Q.Q4_K, Q.Q5_K)
# Batch rows of a whole context each, every id of the vocabulary among them.
ROWS, TOKENS = 5, 64


@functools.cache
def synthetic(directory: Path, kind: Q, tied: bool) -> Path:
    """A one-layer llama GGUF whose token table (and untied output projection) is ``kind``, the
    other matrices float32."""
    path = directory / f"{kind.name}-{'tied' if tied else 'untied'}.gguf"
    return write_synthetic_gguf(path, Synthetic("llama", layers=1, tied=tied, table=kind))


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tables")


def gguf_table(path: Path) -> npt.NDArray[np.float32]:
    """The token table as the ``gguf`` package dequantizes it."""
    (tensor,) = [t for t in GGUFReader(path).tensors if t.name == "token_embd.weight"]
    table: npt.NDArray[np.float32] = quants.dequantize(tensor.data, tensor.tensor_type)
    return table


def run_graph(
    model: GgufModel, precision: str, directory: Path, ids: npt.NDArray[np.int64]
) -> tuple[onnx.GraphProto, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The graph built for ``precision`` (initializers without their data), and the looked-up
    rows and logits of one step over ``ids`` ``[rows, tokens]`` from empty caches."""
    build_graph(model, precision, directory, lambda: None)
    proto = onnx.load(directory / f"model.{precision}.onnx", load_external_data=False)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("embedded", 1, None))
    onnx.save(proto, directory / "probe.onnx")
    session = ort.InferenceSession(
        str(directory / "probe.onnx"), providers=["CPUExecutionProvider"]
    )
    h = model.hyper
    rows, tokens = ids.shape
    feeds: dict[str, npt.NDArray[np.generic]] = {
        "input_ids": ids,
        "seqlens_k": np.full(rows, tokens - 1, np.int32),
        "total_sequence_length": np.array(tokens, np.int32),
        "num_logits": np.array([tokens]),
    }
    cache = (rows, h.kv_heads, cache_capacity(h.context_length), h.head_dim)
    for i in range(h.layers):
        for kind in ("key", "value"):
            feeds[f"past_{kind}.{i}"] = np.zeros(cache, np.float16 if precision == "fp16" else F32)
    logits, embedded = session.run(["logits", "embedded"], feeds)
    return proto.graph, embedded, logits


def initializer_dims(graph: onnx.GraphProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in graph.initializer}


def check_layout(graph: onnx.GraphProto, model: GgufModel, tied: bool, precision: str) -> None:
    """Packed graphs look rows up in the table's codes, which a tied head reads too; fp32 ones
    in a float table."""
    h = model.hyper
    dims = initializer_dims(graph)
    (lookup,) = [n for n in graph.node if n.output[0] == "embedded"]
    if precision not in ("int4", "fp16"):
        assert (lookup.op_type, lookup.input[0]) == ("Gather", "token_embd.weight")
        assert dims["token_embd.weight"] == [h.vocab_size, h.hidden]
        return
    assert "token_embd.weight" not in dims
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    codes = gather.input[0]
    assert dims[codes][0] == h.vocab_size
    heads = [
        n
        for n in graph.node
        if n.op_type == "MatMulNBits"
        and any(a.name == "N" and a.i == h.vocab_size for a in n.attribute)
    ]
    assert len(heads) == 1
    assert (heads[0].input[1] == codes) == tied
    # The only [vocab, ...] codes: the head's own when untied.
    tables = [
        name for name, d in dims.items() if name.endswith(".qweight") and d[0] == h.vocab_size
    ]
    assert len(tables) == (1 if tied else 2)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("kind", QUANT_TYPES, ids=lambda k: k.name)
def test_looked_up_rows_are_ggufs_own_and_the_head_shares_the_codes(
    directory: Path, tmp_path: Path, kind: Q, tied: bool, precision: str
) -> None:
    """Every row of the vocabulary looked up is ``gguf``'s dequantization of it: bit for bit
    where the type has no offset; for the types with one (``d * (q - 2^(bits-1)) + r``, ``r`` a
    float32 residual) to float32 rounding: measured at most 1.7e-7 of the table's largest
    value (9.5e-7 absolute for Q5_1 and Q5_K, 1.2e-7 for Q2_K and Q4_K, 6e-8 for Q4_1; about
    one float32 ulp), asserted within 5e-7. Logits are the numpy forward pass's over the
    dequantized weights to 0.5% of their scale (measured up to 0.45%: an 8-bit head takes int8
    activations)."""
    path = synthetic(directory, kind, tied)
    model = open_gguf(path)
    vocab = model.hyper.vocab_size
    assert vocab <= ROWS * TOKENS
    ids = (np.arange(ROWS * TOKENS) % vocab).reshape(ROWS, TOKENS)
    graph, embedded, logits = run_graph(model, precision, tmp_path, ids)
    check_layout(graph, model, tied, precision)

    expected = gguf_table(path)[ids]
    assert embedded.dtype == np.float32
    assert np.abs(expected).max() > 0
    if kind in WITH_OFFSETS and precision != "fp32":
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(embedded, expected, rtol=0, atol=5e-7 * scale)
    else:
        np.testing.assert_array_equal(embedded.view(np.uint32), expected.view(np.uint32))

    reference = numpy_forward(model, [int(i) for i in ids[0]])
    scale = float(np.abs(reference).max())
    np.testing.assert_allclose(logits[0], reference, rtol=0, atol=5e-3 * scale)
    assert (logits[0].argmax(-1) == reference.argmax(-1)).mean() >= 0.95
