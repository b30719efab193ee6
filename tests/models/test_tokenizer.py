"""The tokenizer and chat template saved at import time, checked against the GGUF's own vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbee.errors import ModelError
from rbee.models.importer import DEFAULT_MODEL
from rbee.models.store import ModelStore
from rbee.models.tokenizer import ModelTokenizer, render_chat

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer(model_store: Path) -> ModelTokenizer:
    store = ModelStore(model_store)
    return ModelTokenizer.load(store.dir(DEFAULT_MODEL), store.get(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def vocab(model_store: Path) -> dict[str, int]:
    data = json.loads((ModelStore(model_store).dir(DEFAULT_MODEL) / "tokenizer.json").read_text())
    table: dict[str, int] = data["model"]["vocab"]
    return table


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading spaces and\ttabs\nnew lines",
        "Zahlen 2024, émoji 🐝 and 中文",
        "<|im_start|>user\nhi<|im_end|>",
    ],
)
def test_round_trip(tokenizer: ModelTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert tokenizer.decode(ids) == plain


def test_digits_are_split_one_by_one(tokenizer: ModelTokenizer, vocab: dict[str, int]) -> None:
    assert tokenizer.encode("12345") == [vocab[d] for d in "12345"]
    assert tokenizer.encode(" 2024") == [vocab["Ġ"], *(vocab[d] for d in "2024")]


def test_byte_level_words_without_prefix_space(
    tokenizer: ModelTokenizer, vocab: dict[str, int]
) -> None:
    assert tokenizer.encode("Hello world") == [vocab["Hello"], vocab["Ġworld"]]
    assert tokenizer.encode("the") == [vocab["the"]]


def test_control_tokens_are_special(tokenizer: ModelTokenizer) -> None:
    assert tokenizer.encode("<|im_start|>assistant<|im_end|>")[0] == 1
    assert tokenizer.encode("<|im_end|>") == [2]
    assert tokenizer.encode("<|endoftext|>") == [0]
    assert tokenizer.decode([1, 2, 0]) == ""
    assert list(tokenizer.stop_token_ids) == [0, 2]


def test_chat_template_renders_without_bos(tokenizer: ModelTokenizer) -> None:
    prompt = tokenizer.render_chat([("user", "Hi")])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = tokenizer.render_chat([("system", "Be brief."), ("user", "Hi")])
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_broken_template_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="chat template"):
        render_chat("{{ raise_exception('no system role') }}", [("user", "x")])
    with pytest.raises(ModelError, match="chat template"):
        render_chat("{% for %}", [("user", "x")])
