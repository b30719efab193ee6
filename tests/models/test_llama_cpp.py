"""rbee against llama.cpp's recorded behaviour (`bench/llama_reference.py`): token ids on a
corpus of accents, scripts, emoji, code, spaces and digits; next-token agreement over a
teacher-forced text of more than 1,000 tokens; greedy continuations; and the logits of small
random-weight files of the architectures that have no small real model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from rbee.models.importer import DEFAULT_MODEL, PRECISIONS, import_gguf
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
# With block-quantized weights llama.cpp's CPU kernels round each activation vector to 8-bit
# blocks before the matmul. That rounding is discontinuous: arithmetic that differs from
# llama.cpp's in the last float bits lands on other codes here and there, and the logits move by
# about 0.15 (0.13 to 0.18 here, logits of 15 to 25), so next to any other implementation its top
# token is another wherever two candidates are that close. The reference shows it on llama.cpp
# itself: with only its KV cache in F32 instead of F16 it agrees with its own default run on
# 97.1% (default model) and 95.6% (Gemma) of the next tokens; rbee's int4 graphs on 97.5% and
# 95.5%, its fp32 graphs on 97.7% and 96.1%, and all of them on 100% wherever llama.cpp's top
# token leads by more than 0.5. In float arithmetic (the file dequantized to F32 by llama.cpp)
# rbee's fp32 graph agrees on 100% and 99.9%, its int4 graph on 98.6% and 98.0% (its 8-bit
# matmuls, like llama.cpp's, take int8 activations), its fp16 graph on 98.8% and 98.8% (grouped
# KL 0.0004 and 0.0002).
NEAR_TIE = 0.3
CLEAR_LEAD = 0.5
# How far below llama.cpp's agreement with itself (across KV cache precisions) rbee may be.
SELF_AGREEMENT_SLACK = 0.01
MIN_TOP1_FLOAT = {"fp32": 0.99, "int4": 0.97, "fp16": 0.98}
MAX_KL = 0.01
MAX_KL_FLOAT = {"fp32": 1e-4, "int4": 0.01, "fp16": 2e-3}


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


def top1_agreement(ref: dict[str, list[list[float]]], top: np.ndarray) -> float:
    """The share of positions whose top token ``top`` is ``ref``'s."""
    return float((top == np.array(ref["top_ids"])[:, 0]).mean())


@pytest.mark.parametrize("precision", ["int4", "fp16", "fp32"])
@pytest.mark.parametrize("name", MODELS)
def test_teacher_forced_next_tokens_agree(
    stores: dict[str, tuple[Path, Manifest]], name: str, precision: str
) -> None:
    recorded = load(name)
    ref, in_float = recorded["teacher_forced"], recorded["teacher_forced_f32"]
    ids = ref["ids"]
    assert len(ids) > 1000
    engine = Engine(*stores[name], precision=precision, threads=2, slots=1)
    logits = engine.score(0, ids)
    top = logits.argmax(-1)
    agreement, kl = top1_agreement(ref, top), grouped_kl(ref, logits)
    own = top1_agreement(ref, np.array(recorded["teacher_forced_f32_cache"]["top_ids"])[:, 0])
    float_agreement, float_kl = top1_agreement(in_float, top), grouped_kl(in_float, logits)
    print(
        f"{name} {precision}: top-1 agreement {agreement:.4f} (llama.cpp with itself {own:.4f}), "
        f"grouped KL {kl:.5f}; with llama.cpp in float {float_agreement:.4f}, KL {float_kl:.6f}"
    )
    top_logits = np.array(ref["top_logits"])
    clear = top_logits[:, 0] - top_logits[:, 1] > CLEAR_LEAD
    assert agreement >= own - SELF_AGREEMENT_SLACK
    assert clear.mean() > 0.5
    assert (top == np.array(ref["top_ids"])[:, 0])[clear].all()
    assert kl < MAX_KL
    assert float_agreement >= MIN_TOP1_FLOAT[precision]
    assert float_kl < MAX_KL_FLOAT[precision]


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
    manifest = import_gguf(store, path, name=name, precisions=PRECISIONS)
    # With float weights llama.cpp computes in float too; with block-quantized ones it rounds
    # activations to 8 bits (up to 2% of the logits' scale here), rbee's int4 graph too for
    # its 8-bit codes.
    tolerance = 5e-2 if spec.quantized else 2e-3
    for precision in ("fp32", "int4"):
        engine = Engine(store.dir(name), manifest, precision=precision, threads=1, slots=1)
        got = engine.score(0, SYNTHETIC_IDS)
        assert np.abs(got - expected).max() < tolerance * scale, precision
        assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9
