"""rbee against llama.cpp's recorded behaviour (`bench/llama_reference.py`): token ids on a
corpus of accents, scripts, emoji, code, spaces and digits; next-token agreement over a
teacher-forced text of more than 1,000 tokens; greedy continuations; and the logits of small
random-weight files of the architectures that have no small real model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from rbee.models.importer import DEFAULT_MODEL, import_gguf
from rbee.models.store import Manifest, ModelStore
from rbee.models.tokenizer import ModelTokenizer
from rbee.worker.engine import Engine
from tests.models.helpers import first_divergence, write_synthetic_gguf
from tests.models.reference_data import (
    GEMMA,
    GREEDY_PROMPTS,
    REFERENCE,
    SYNTHETIC,
    SYNTHETIC_IDS,
    load,
)

pytestmark = pytest.mark.slow

MODELS = [DEFAULT_MODEL, GEMMA]
# llama.cpp's CPU kernels round activations to 8 bits for quantized weights, which moves its
# logits by about 0.15 on average (0.13 to 0.17 here, logits of 15 to 25): next to ours, its
# top token is another only where two candidates are that close. Measured: top-1 agreement
# 97.5% (default model, int4), 97.7% (fp32), 95.5% (Gemma int4), 96.1% (fp32), and 100%
# wherever llama.cpp's top token leads by more than 0.5; grouped KL 0.0014 to 0.0027.
NEAR_TIE = 0.3
CLEAR_LEAD = 0.5
MIN_TOP1 = 0.95
MAX_KL = 0.01


@pytest.fixture(scope="module")
def stores(model_store: Path, gemma: tuple[Path, Manifest]) -> dict[str, tuple[Path, Manifest]]:
    return {
        DEFAULT_MODEL: (
            ModelStore(model_store).dir(DEFAULT_MODEL),
            ModelStore(model_store).get(DEFAULT_MODEL),
        ),
        GEMMA: (ModelStore(gemma[0]).dir(GEMMA), gemma[1]),
    }


def tokenizer_of(stores: dict[str, tuple[Path, Manifest]], name: str) -> ModelTokenizer:
    return ModelTokenizer.load(*stores[name])


@pytest.mark.parametrize("name", MODELS)
def test_token_ids_equal_llama_cpp(stores: dict[str, tuple[Path, Manifest]], name: str) -> None:
    tokenizer, ref = tokenizer_of(stores, name), load(name)
    corpus = (REFERENCE / "corpus.txt").read_text(encoding="utf-8")
    assert tokenizer.encode(corpus) == ref["corpus"]["whole"]
    lines = corpus.splitlines(keepends=True)
    assert [tokenizer.encode(line) for line in lines] == ref["corpus"]["lines"]
    assert (
        tokenizer.encode((REFERENCE / "long.txt").read_text(encoding="utf-8"))
        == ref["teacher_forced"]["ids"]
    )


def grouped_kl(ref: dict[str, list[list[float]]], logits: np.ndarray) -> float:
    """Mean KL(llama.cpp || rbee) over llama.cpp's top tokens and one bucket for the rest.

    Grouping never raises a KL divergence, so this is a lower bound of the full one; the
    recorded data has llama.cpp's top logits and log-sum-exp, not its whole distribution.
    """
    top_ids = np.array(ref["top_ids"])
    p_top = np.exp(np.array(ref["top_logits"]) - np.array(ref["logsumexp"])[:, None])
    peak = logits.max(-1, keepdims=True)
    log_q = logits - (peak + np.log(np.exp(logits - peak).sum(-1, keepdims=True)))
    q_top = np.exp(np.take_along_axis(log_q, top_ids, -1))
    p = np.concatenate([p_top, np.clip(1 - p_top.sum(-1, keepdims=True), 1e-12, 1)], -1)
    q = np.concatenate([q_top, np.clip(1 - q_top.sum(-1, keepdims=True), 1e-12, 1)], -1)
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


@pytest.mark.parametrize("precision", ["int4", "fp32"])
@pytest.mark.parametrize("name", MODELS)
def test_teacher_forced_next_tokens_agree(
    stores: dict[str, tuple[Path, Manifest]], name: str, precision: str
) -> None:
    ref = load(name)["teacher_forced"]
    ids = ref["ids"]
    assert len(ids) > 1000
    engine = Engine(*stores[name], precision=precision, threads=2, slots=1)
    logits = engine.score(0, ids)
    same = logits.argmax(-1) == np.array(ref["top_ids"])[:, 0]
    top_logits = np.array(ref["top_logits"])
    clear = top_logits[:, 0] - top_logits[:, 1] > CLEAR_LEAD
    kl = grouped_kl(ref, logits)
    print(f"{name} {precision}: top-1 agreement {same.mean():.4f}, grouped KL {kl:.5f}")
    assert same.mean() >= MIN_TOP1
    assert clear.mean() > 0.5
    assert same[clear].all()
    assert kl < MAX_KL


@pytest.mark.parametrize("precision", ["int4", "fp32"])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_continuations_equal_llama_cpp_up_to_near_ties(
    stores: dict[str, tuple[Path, Manifest]], name: str, precision: str
) -> None:
    tokenizer, ref = tokenizer_of(stores, name), load(name)
    engine = Engine(*stores[name], precision=precision, threads=2, slots=1)
    found = {
        prompt: first_divergence(engine, tokenizer.encode(prompt), ref["greedy"][prompt])
        for prompt in GREEDY_PROMPTS
    }
    for prompt, divergence in found.items():
        print(f"{name} {precision} {prompt!r}: {divergence or 'equal'}")
    margins = [d[1] for d in found.values() if d is not None]
    assert all(margin < NEAR_TIE for margin in margins)


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_models_match_llama_cpp_logits(tmp_path: Path, name: str) -> None:
    """Random-weight qwen2, qwen3, gemma3, phi3 and K-quant llama files, regenerated byte for
    byte."""
    spec, ref = SYNTHETIC[name], load("synthetic")["models"][name]
    path = write_synthetic_gguf(tmp_path / f"{name}.gguf", spec)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["gguf_sha256"]
    expected = np.array(ref["logits"], np.float32)
    scale = float(np.abs(expected).max())
    store = ModelStore(tmp_path / "store")
    manifest = import_gguf(store, path, name=name)
    # With float weights llama.cpp computes in float too; with block-quantized ones it rounds
    # activations to 8 bits (up to 2% of the logits' scale here), rbee's int4 graph too for
    # its 8-bit codes.
    tolerance = 5e-2 if spec.quantized else 2e-3
    for precision in ("fp32", "int4"):
        engine = Engine(store.dir(name), manifest, precision=precision, threads=1, slots=1)
        got = engine.score(0, SYNTHETIC_IDS)
        assert np.abs(got - expected).max() < tolerance * scale, precision
        assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
