"""Gemma 3 270M (base, Q4_K_M: Q4_K, Q6_K, Q5_0 and Q8_0 tensors) from its PyPI packages:
imported, run in both precisions and by a real worker process, against llama.cpp's greedy text.

llama.cpp's raw greedy completions of these prompts (design notes, measured with llama.cpp on the
same file) are the reference.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from rbee.models.store import Manifest, ModelStore
from rbee.models.tokenizer import ModelTokenizer
from rbee.worker.engine import Engine
from tests.helpers import RBEE
from tests.models.helpers import first_divergence
from tests.models.reference_data import GEMMA

pytestmark = pytest.mark.slow

NAME = GEMMA
LLAMA_CPP = {
    "The capital of France is": " the capital of the country of France. It is the largest city in"
    " France.",
    "Water boils at a temperature of": " 100 degrees Celsius.",
}
# Gemma 270M meets near-ties often: on the first prompt int4 prefers " capital" to llama.cpp's
# " largest" by 0.03 (logits around 17), fp32 " and" to "." by 0.012 (around 22). Greedy text
# must equal llama.cpp's up to a position where the two next tokens are this close.
NEAR_TIE = 0.1


@pytest.fixture(scope="module")
def tokenizer(gemma: tuple[Path, Manifest]) -> ModelTokenizer:
    root, manifest = gemma
    return ModelTokenizer.load(ModelStore(root).dir(NAME), manifest)


def greedy(engine: Engine, tokenizer: ModelTokenizer, prompt: str, tokens: int) -> str:
    logits = engine.prefill(0, tokenizer.encode(prompt))
    out: list[int] = []
    for _ in range(tokens):
        out.append(int(logits.argmax()))
        logits = engine.decode([0], [out[-1]])[0]
    return tokenizer.decode(out)


def continuation(tokenizer: ModelTokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)[1:]  # without the BOS


def test_manifest(gemma: tuple[Path, Manifest], tokenizer: ModelTokenizer) -> None:
    _, manifest = gemma
    assert (manifest.architecture, manifest.vocab_size) == ("gemma3", 262144)
    assert manifest.context_length == 32768
    assert manifest.bos_token_id == 2
    assert {1, 106} <= set(manifest.stop_token_ids)
    # A base model with no template in the file: raw prompts only.
    assert (manifest.chat_template, manifest.chat_template_source) == ("", "none")
    assert tokenizer.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]


@pytest.mark.parametrize("precision", ["fp32", "int4", "fp16"])
@pytest.mark.parametrize("prompt", list(LLAMA_CPP))
def test_greedy_raw_completions_match_llama_cpp(
    gemma: tuple[Path, Manifest], tokenizer: ModelTokenizer, precision: str, prompt: str
) -> None:
    root, manifest = gemma
    engine = Engine(ModelStore(root).dir(NAME), manifest, precision=precision, threads=2, slots=1)
    wanted = continuation(tokenizer, LLAMA_CPP[prompt])
    divergence = first_divergence(engine, tokenizer.encode(prompt), wanted)
    if divergence is not None:
        position, margin = divergence
        assert position >= 8
        assert margin < NEAR_TIE


@pytest.fixture(scope="module")
def worker(gemma: tuple[Path, Manifest]) -> Iterator[str]:
    root, _ = gemma
    process = subprocess.Popen(
        [
            *RBEE,
            "worker",
            "daemon",
            "--model",
            NAME,
            "--models-dir",
            str(root),
            "--port",
            "0",
            "--slots",
            "2",
            "--threads",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = lines.get(timeout=60).rsplit(" ", 1)[1]
        assert lines.get(timeout=180).startswith(f"rbee worker ready model={NAME}")
        yield url
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def worker_text(url: str, prompt: str, max_tokens: int) -> str:
    body = {"prompt": prompt, "temperature": 0, "max_tokens": max_tokens}
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/v1/inference", json=body)
        assert r.status_code == 202, r.text
        with client.stream("GET", r.json()["sse_url"]) as stream:
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(
        e["t"] for e in map(json.loads, events[:-1]) if isinstance(e, dict) and e["type"] == "token"
    )


def test_a_worker_answers_greedily_as_the_engine_and_llama_cpp_do(
    gemma: tuple[Path, Manifest], worker: str, tokenizer: ModelTokenizer
) -> None:
    root, manifest = gemma
    engine = Engine(ModelStore(root).dir(NAME), manifest, precision="int4", threads=2, slots=1)
    for prompt, expected in LLAMA_CPP.items():
        tokens = len(continuation(tokenizer, expected))
        text = worker_text(worker, prompt, tokens)
        assert text == greedy(engine, tokenizer, prompt, tokens)
    water = "Water boils at a temperature of"
    assert text == LLAMA_CPP[water]


def test_a_chat_request_to_a_base_model_is_refused(worker: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    r = httpx.post(f"{worker}/v1/inference", json=body, timeout=30)
    assert r.status_code == 422  # a ModelError: this model cannot serve that request
    assert "no chat template" in r.json()["error"]["message"]


def test_teacher_forced_packed_graphs_agree_with_fp32(
    gemma: tuple[Path, Manifest], tokenizer: ModelTokenizer
) -> None:
    """Over English text the graphs pick the same next token almost everywhere: int4 and fp16
    at 98.3% of the positions here (fp16 keeps the 8-bit matmuls exact, int4 gives them int8
    activations)."""
    root, manifest = gemma
    ids = tokenizer.encode(Path(__file__).with_name("english.txt").read_text(encoding="utf-8"))
    tops = {
        p: Engine(ModelStore(root).dir(NAME), manifest, precision=p, threads=2, slots=1)
        .score(0, ids)
        .argmax(-1)
        for p in ("int4", "fp16", "fp32")
    }
    assert float(np.mean(tops["int4"] == tops["fp32"])) >= 0.97
    assert float(np.mean(tops["fp16"] == tops["fp32"])) >= 0.98
