"""Every architecture on small random-weight GGUFs: the converted graphs against a numpy forward
pass written from the architectures' definitions, in fp32 (exact weights), int4 (every block
type, kept packed) and fp16 (the same, with half-precision activations and KV cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rbee.errors import ModelError
from rbee.models.gguf_file import open_gguf
from rbee.models.importer import PRECISIONS, import_gguf
from rbee.models.store import ModelStore
from rbee.models.tokenizer import ModelTokenizer
from rbee.worker.engine import Engine
from tests.models.helpers import Synthetic, numpy_forward, write_synthetic_gguf

SPECS = {
    "llama": Synthetic("llama"),
    "llama-untied": Synthetic("llama", tied=False),
    "qwen2": Synthetic("qwen2"),
    "qwen3": Synthetic("qwen3", heads=2, kv_heads=1, head_dim=96),
    # Six layers: five in a sliding window of 5 tokens, the last one global.
    "gemma3": Synthetic("gemma3", layers=6, heads=2, kv_heads=1, head_dim=96, sliding_window=5),
    "phi3": Synthetic("phi3", kv_heads=4, sliding_window=5, tied=False),
}
IDS = [int(t) for t in np.random.default_rng(9).integers(0, 256, 20)]


def imported(
    tmp_path: Path, name: str, spec: Synthetic, precisions: tuple[str, ...] = ("fp32", "int4")
) -> tuple[Path, list[Engine]]:
    path = write_synthetic_gguf(tmp_path / f"{name}.gguf", spec)
    store = ModelStore(tmp_path / "store")
    manifest = import_gguf(store, path, name=name, precisions=precisions)
    assert manifest.architecture == spec.arch
    engines = [
        Engine(store.dir(name), manifest, precision=p, threads=1, slots=2) for p in precisions
    ]
    return path, engines


@pytest.mark.parametrize("name", list(SPECS))
def test_fp32_graph_matches_the_numpy_forward_pass(tmp_path: Path, name: str) -> None:
    path, (fp32, _) = imported(tmp_path, name, SPECS[name])
    expected = numpy_forward(open_gguf(path), IDS)
    got = fp32.score(0, IDS)
    assert np.abs(expected).max() > 1
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name", list(SPECS))
def test_int4_graph_of_every_block_type_matches_the_numpy_forward_pass(
    tmp_path: Path, name: str
) -> None:
    """8-bit codes meet int8 activations in ORT's kernels: close, and the same top tokens."""
    spec = SPECS[name]
    quantized = Synthetic(**{**spec.__dict__, "quantized": True})
    path, (fp32, int4) = imported(tmp_path, name, quantized)
    expected = numpy_forward(open_gguf(path), IDS)
    np.testing.assert_allclose(
        fp32.score(0, IDS), expected, rtol=0, atol=2e-4 * np.abs(expected).max()
    )
    got = int4.score(0, IDS)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.05 * scale
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("name", list(SPECS))
def test_fp16_graph_matches_the_numpy_forward_pass(
    tmp_path: Path, name: str, quantized: bool
) -> None:
    """Half-precision activations, float weights (dense matmuls) or every block type (packed):
    float32 logits within 0.2% of their scale (2% packed, as int4), the same top tokens."""
    spec = Synthetic(**{**SPECS[name].__dict__, "quantized": quantized})
    path, (fp16,) = imported(tmp_path, name, spec, ("fp16",))
    expected = numpy_forward(open_gguf(path), IDS)
    got = fp16.score(0, IDS)
    assert got.dtype == np.float32
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < (0.02 if quantized else 2e-3) * scale
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["gemma3", "qwen3"])
def test_decoding_with_the_cache_matches_recomputing(
    tmp_path: Path, name: str, precision: str
) -> None:
    """One token at a time past the sliding window gives the logits of one whole-prompt run."""
    _, (engine,) = imported(tmp_path, name, SPECS[name], (precision,))
    full = engine.score(0, IDS)
    steps = [engine.prefill(1, IDS[:3])]
    steps += [engine.decode([1], [t])[0] for t in IDS[3:]]
    tolerance = 1e-4 if precision == "fp32" else 5e-3
    np.testing.assert_allclose(
        np.stack(steps), full[2:], rtol=0, atol=tolerance * np.abs(full).max()
    )


@pytest.mark.parametrize(
    ("spec", "source"),
    [
        (Synthetic("gemma3", layers=1, name="gemma-3-270m-it"), "built-in"),
        (Synthetic("gemma3", layers=1, name="gemma-3-270m"), "none"),
        (Synthetic("qwen2", layers=1, chat_template="{{ messages[0]['content'] }}!"), "gguf"),
    ],
)
def test_chat_template_from_the_file_the_architecture_or_none(
    tmp_path: Path, spec: Synthetic, source: str
) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = import_gguf(
        store, write_synthetic_gguf(tmp_path / "m.gguf", spec), name="m", precisions=PRECISIONS
    )
    assert manifest.chat_template_source == source
    tokenizer = ModelTokenizer.load(store.dir("m"), manifest)
    if source == "none":
        assert manifest.chat_template == ""
        with pytest.raises(ModelError, match="no chat template"):
            tokenizer.render_chat([("user", "Hi")])
    elif source == "built-in":
        assert tokenizer.render_chat([("system", "Be brief."), ("user", "Hi")]) == (
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        )
    else:
        assert tokenizer.render_chat([("user", "Hi")]) == "Hi!"
