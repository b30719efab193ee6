"""Every GGUF block type read as codes and scales, checked bit for bit against ``gguf``'s own
dequantization, and laid out for MatMulNBits without changing a value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from gguf import GGMLQuantizationType, quants

from rbee.models import graph
from rbee.models.gguf_file import open_gguf
from rbee.models.nbits import NBitsWeight, lookup_residual, stack_rows, to_nbits
from rbee.models.quants import QUANT_TYPES, QuantBlocks, merge_rows, read_blocks
from tests.models.helpers import F16_FIELDS, LlamaShape, random_blocks, write_llama_shaped_gguf

Q = GGMLQuantizationType
ROWS, COLS = 8, 512


def random_raw(kind: Q, seed: int) -> npt.NDArray[np.uint8]:
    return random_blocks(kind, ROWS, COLS, np.random.default_rng(seed))


def test_every_supported_type_is_covered() -> None:
    assert set(QUANT_TYPES) == set(F16_FIELDS)


@pytest.mark.parametrize("kind", list(F16_FIELDS), ids=lambda k: k.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_dequantize_is_bit_exact_against_gguf(kind: Q, seed: int) -> None:
    raw = random_raw(kind, seed)
    expected = quants.dequantize(raw, kind)
    blocks = read_blocks(kind, raw)
    got = blocks.dequantize()
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (ROWS, COLS)
    assert np.abs(expected).max() > 0
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert blocks.q.max() < (1 << blocks.bits)


@pytest.mark.parametrize("kind", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0], ids=lambda k: k.name)
def test_blocks_quantized_by_gguf_read_back(kind: Q) -> None:
    weights = np.random.default_rng(3).standard_normal((ROWS, COLS)).astype(np.float32)
    raw = quants.quantize(weights, kind)
    got = read_blocks(kind, raw).dequantize()
    np.testing.assert_array_equal(got, quants.dequantize(raw, kind))
    assert np.abs(got - weights).max() < 0.5


def nbits_values(blocks: QuantBlocks) -> npt.NDArray[np.float32]:
    """What MatMulNBits computes as weights from `to_nbits`'s inputs, in float64."""
    nb = to_nbits(blocks)
    nblocks = nb.k // nb.block
    if nb.bits == 4:
        codes = np.stack([nb.packed & 0x0F, nb.packed >> 4], axis=-1).reshape(nb.n, nblocks, -1)
    else:
        codes = nb.packed.reshape(nb.n, nblocks, -1)
    if nb.zero_points is None:
        zp = np.full((nb.n, nblocks), 1 << (nb.bits - 1), np.float64)
    elif nb.bits == 4:
        pairs = np.stack([nb.zero_points & 0x0F, nb.zero_points >> 4], axis=-1)
        zp = pairs.reshape(nb.n, -1)[:, :nblocks].astype(np.float64)
    else:
        zp = nb.zero_points.reshape(nb.n, nblocks).astype(np.float64)
    scales = nb.scales.reshape(nb.n, nblocks).astype(np.float64)
    values = scales[..., None] * (codes - zp[..., None])
    if nb.residual is not None:
        values = values + nb.residual.T[..., None].astype(np.float64)
    result: npt.NDArray[np.float32] = values.reshape(nb.n, nb.k).astype(np.float32)
    return result


@pytest.mark.parametrize("kind", list(F16_FIELDS), ids=lambda k: k.name)
def test_matmulnbits_layout_keeps_the_values(kind: Q) -> None:
    """Codes, scales and zero points as given; only the residual of an offset is rounded."""
    blocks = read_blocks(kind, random_raw(kind, 5))
    exact = blocks.dequantize()
    nb = to_nbits(blocks)
    assert (nb.bits, nb.block) == (blocks.bits, blocks.block)
    if blocks.m is None:
        assert nb.zero_points is None
        assert nb.residual is None
        np.testing.assert_array_equal(nbits_values(blocks), exact)
    else:
        assert nb.residual is not None
        scale = np.abs(blocks.d).max()
        np.testing.assert_allclose(nbits_values(blocks), exact, rtol=0, atol=scale * 1e-5)


@pytest.mark.parametrize("kind", list(F16_FIELDS), ids=lambda k: k.name)
def test_a_lookup_with_default_zero_points_and_a_residual_keeps_the_values(kind: Q) -> None:
    """What the token table's lookup reads: ``d * (q - 2^(bits-1)) + r``, exact where the type
    has no offset, else within float32 rounding of ``r``."""
    blocks = read_blocks(kind, random_raw(kind, 13))
    exact = blocks.dequantize()
    zero = np.float32(1 << (blocks.bits - 1))
    values = (blocks.q.astype(np.float32) - zero) * blocks.d[..., None]
    residual = lookup_residual(blocks)
    if residual is None:
        assert blocks.m is None
        np.testing.assert_array_equal(values.reshape(exact.shape), exact)
    else:
        assert residual.shape == blocks.d.shape
        got = (values + residual[..., None]).reshape(exact.shape)
        np.testing.assert_allclose(got, exact, rtol=0, atol=5e-7 * np.abs(exact).max())


def test_rows_of_different_types_merge_into_one_matrix() -> None:
    parts = [read_blocks(k, random_raw(k, 7)) for k in (Q.Q4_0, Q.Q4_1, Q.Q4_K)]
    merged = merge_rows(parts)
    expected = np.concatenate([p.dequantize() for p in parts])
    np.testing.assert_allclose(merged.dequantize(), expected, rtol=0, atol=1e-6)
    same = merge_rows([parts[0], parts[0]])
    assert same.m is None
    assert same.zero == 8


def assert_same_layout(got: NBitsWeight, expected: NBitsWeight) -> None:
    assert (got.n, got.k, got.bits, got.block) == (
        expected.n,
        expected.k,
        expected.bits,
        expected.block,
    )
    for field in ("packed", "scales", "zero_points", "residual"):
        a, b = getattr(got, field), getattr(expected, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype, field
            np.testing.assert_array_equal(a, b, err_msg=field)


@pytest.mark.parametrize("kind", list(F16_FIELDS), ids=lambda k: k.name)
def test_runs_of_rows_stack_into_the_layout_of_the_whole_matrix(kind: Q) -> None:
    """What a big output projection is written from: runs converted one at a time."""
    raw = random_raw(kind, 11)
    whole = to_nbits(read_blocks(kind, raw))
    runs = [to_nbits(read_blocks(kind, raw[start:stop])) for start, stop in ((0, 3), (3, ROWS))]
    assert_same_layout(stack_rows(runs), whole)
    kept = [run.without_codes() for run in runs]
    # No view of a run's codes, which would keep them in memory.
    assert all(len(k.packed) == 0 and k.packed.base is None for k in kept)
    codeless = stack_rows(kept)
    assert len(codeless.packed) == 0
    assert_same_layout(codeless, dataclasses.replace(whole, packed=codeless.packed))


def test_a_tied_head_of_many_runs_of_rows_holds_the_whole_matrix(tmp_path: Path) -> None:
    """A tied Q4_0 embedding of more rows than the graph converts at a time: the output
    projection's initializers are those of the whole matrix laid out at once."""
    shape = LlamaShape(layers=1, hidden=64, ffn=64, heads=2, kv_heads=1, vocab=20000)
    assert shape.vocab > 2 * graph._TABLE_ROWS
    model = open_gguf(write_llama_shaped_gguf(tmp_path / "m.gguf", shape, Q.Q4_0, Q.Q4_0))
    graph.build_graph(model, "int4", tmp_path, lambda: None)
    proto = onnx.load(tmp_path / "model.int4.onnx").graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in proto.initializer}
    whole = to_nbits(model.blocks("token_embd.weight"))
    (head,) = [n for n in proto.node if n.op_type == "MatMulNBits" and "output.scales" in n.input]
    np.testing.assert_array_equal(values[head.input[1]], whole.packed)
    np.testing.assert_array_equal(values["output.scales"], whole.scales)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    assert (attributes["N"], attributes["K"], attributes["bits"]) == (shape.vocab, 64, 4)
