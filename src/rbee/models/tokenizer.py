"""The model's tokenizer and chat template, taken from the GGUF metadata at import time.

`tokenizer_json` turns a GPT-2 style byte-level BPE vocabulary (``tokenizer.ggml.model = gpt2``)
into a ``tokenizers`` JSON document, saved next to the graph so that workers never parse the GGUF.
The pre-tokenizer follows llama.cpp's ``smollm`` rule: digits split one by one, then byte-level
splitting without a prefix space. Control tokens (``<|im_start|>``, ...) are special tokens.

`ModelTokenizer` is what a worker loads: ids <-> text, the chat template rendered with Jinja in a
sandbox, and the end-of-turn token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from rbee.errors import ModelError
from rbee.models.gguf_file import GgufModel
from rbee.models.store import Manifest

__all__ = ["TOKENIZER_FILE", "ModelTokenizer", "render_chat", "stop_token_ids", "tokenizer_json"]

TOKENIZER_FILE = "tokenizer.json"
_CONTROL = 3
_SUPPORTED_PRE = ("smollm", "gpt-2", "default", "")
# Tokens that end an assistant turn in the chat formats we know, besides the declared EOS.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")


def tokenizer_json(model: GgufModel) -> str:
    """The ``tokenizers`` JSON of the GGUF's vocabulary; `ModelError` for unsupported kinds."""
    kind = model.field("tokenizer.ggml.model")
    pre = model.field("tokenizer.ggml.pre", "")
    if kind != "gpt2" or pre not in _SUPPORTED_PRE:
        raise ModelError(
            f"{model.path}: unsupported tokenizer {kind!r} (pre-tokenizer {pre!r}); "
            "supported: byte-level BPE ('gpt2') with the 'smollm' or 'gpt-2' pre-tokenizer"
        )
    tokens: list[str] = list(model.field("tokenizer.ggml.tokens"))
    types: list[int] = list(model.field("tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    splitters: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ]
    if pre == "smollm":
        splitters.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splitters)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind_ in zip(tokens, types, strict=True)
            if kind_ == _CONTROL
        ]
    )
    return str(tokenizer.to_str())


def stop_token_ids(model: GgufModel) -> list[int]:
    """The declared EOS plus every control token that ends a turn in a known chat format."""
    tokens: list[str] = list(model.field("tokenizer.ggml.tokens"))
    types: list[int] = list(model.field("tokenizer.ggml.token_type"))
    stops = {i for i, t in enumerate(tokens) if t in _END_OF_TURN and types[i] == _CONTROL}
    eos = model.field("tokenizer.ggml.eos_token_id")
    if eos is not None:
        stops.add(int(eos))
    return sorted(stops)


def render_chat(template: str, messages: Sequence[tuple[str, str]]) -> str:
    """Render ``template`` for ``(role, content)`` turns, opening the assistant's turn."""
    try:
        return _compiled(template).render(
            messages=[{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True,
        )
    except jinja2.TemplateError as err:
        raise ModelError(f"the model's chat template failed: {err}") from None


# Compiling a template takes about 3 ms, which every chat request would otherwise pay on its way
# to the first token; a worker serves one model, so one template.
@functools.lru_cache(maxsize=4)
def _compiled(template: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def _raise_exception(message: str) -> None:
    raise ModelError(f"chat template: {message}")


class ModelTokenizer:
    """Text <-> ids for one model in the store, plus its chat template and stop tokens."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str, stop_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self._stop_ids = tuple(stop_ids)

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest) -> ModelTokenizer:
        path = model_dir / TOKENIZER_FILE
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for unreadable files
            raise ModelError(f"cannot load {path}: {err}") from None
        return cls(tokenizer, manifest.chat_template, manifest.stop_token_ids)

    @property
    def stop_token_ids(self) -> Sequence[int]:
        return self._stop_ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special tokens written in it are parsed as such, no BOS is added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` without special tokens."""
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for ``(role, content)`` turns, ending with the assistant's turn opened."""
        if not self.chat_template:
            raise ModelError("this model has no chat template; send a plain prompt instead")
        return render_chat(self.chat_template, messages)
