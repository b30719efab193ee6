"""The model's tokenizer and chat template, taken from the GGUF metadata at import time.

`tokenizer_json` turns the GGUF vocabulary into a ``tokenizers`` JSON document, saved next to the
graph so that workers never parse the GGUF. It follows llama.cpp's tokenizers, whose ids are the
reference:

- ``gpt2`` (byte-level BPE, Llama 3, Qwen, SmolLM): the GGUF's merges, after the split that
  ``tokenizer.ggml.pre`` names (`_PRE_TOKENIZERS`: the regular expressions of llama.cpp's
  ``llama-vocab.cpp``).
- ``llama`` (SentencePiece, Llama 2, Mistral, Gemma): spaces become ``▁`` (with a leading one
  when ``add_space_prefix`` says so), then pieces merge by score, highest first; characters
  outside the vocabulary fall back to their ``<0xNN>`` byte tokens. llama.cpp merges any two
  adjacent pieces whose concatenation is a token; a BPE whose merges are every split of every
  token into two tokens, ranked by the token's score, does the same.

Control tokens are special tokens (parsed in prompts, dropped from decoded text); user-defined
ones (Gemma's runs of spaces and newlines, HTML tags) are matched in the raw text first, as
llama.cpp does.

`ModelTokenizer` is what a worker loads: ids <-> text (with the BOS the metadata asks for), the
chat template rendered with Jinja in a sandbox, and the end-of-turn token ids.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from rbee.errors import ModelError
from rbee.models.gguf_file import GgufModel
from rbee.models.store import Manifest

__all__ = [
    "TOKENIZER_FILE",
    "ModelTokenizer",
    "bos_token_id",
    "chat_template",
    "render_chat",
    "stop_token_ids",
    "tokenizer_json",
]

TOKENIZER_FILE = "tokenizer.json"
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
# Tokens that end an assistant turn in the chat formats we know, besides the declared EOS.
_END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp's pre-tokenizer names and their splits, applied in order before byte-level BPE.
_PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [_GPT2],
    "gpt-2": [_GPT2],
    "": [_GPT2],
    "smollm": [r"\p{N}", _GPT2],
    "llama-bpe": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    ],
    "qwen2": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    ],
}
# llama.cpp's llama-bpe takes a word that is a token as it is, before any merge.
_IGNORE_MERGES = ("llama-bpe",)
# What every tokenizer kind needs from the metadata; the rest have defaults.
_TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens")


def tokenizer_json(model: GgufModel) -> str:
    """The ``tokenizers`` JSON of the GGUF's vocabulary; `ModelError` for unsupported kinds and
    for a file without the tokenizer metadata."""
    missing = [key for key in _TOKENIZER_KEYS if model.reader.get_field(key) is None]
    if missing:
        raise ModelError(
            f"{model.path}: no tokenizer in the GGUF metadata ({', '.join(missing)} missing); "
            "rbee reads the tokenizer from the file, as llama.cpp's converters write it"
        )
    kind = model.field("tokenizer.ggml.model")
    pre = str(model.field("tokenizer.ggml.pre", ""))
    tokens: list[str] = list(model.field("tokenizer.ggml.tokens"))
    types: list[int] = list(model.field("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    if kind == "gpt2" and pre in _PRE_TOKENIZERS:
        tokenizer = _byte_level_bpe(model, tokens, pre)
    elif kind == "llama":
        tokenizer = _sentencepiece(model, tokens, types)
    else:
        raise ModelError(
            f"{model.path}: unsupported tokenizer {kind!r} (pre-tokenizer {pre!r}); supported: "
            "SentencePiece ('llama') and byte-level BPE ('gpt2') with the pre-tokenizers "
            + ", ".join(repr(p) for p in _PRE_TOKENIZERS if p)
        )
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, type_ in zip(tokens, types, strict=True)
            if type_ == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, special=False, normalized=False)
            for token, type_ in zip(tokens, types, strict=True)
            if type_ == _USER_DEFINED
        ]
    )
    return str(tokenizer.to_str())


def _vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    return vocab


def _byte_level_bpe(model: GgufModel, tokens: list[str], pre: str) -> Tokenizer:
    merges = [tuple(m.split(" ", 1)) for m in model.field("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(
        models.BPE(
            vocab=_vocab(tokens),
            merges=merges,
            fuse_unk=False,
            ignore_merges=pre in _IGNORE_MERGES,
        )
    )
    splitters: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        for pattern in _PRE_TOKENIZERS[pre]
    ]
    splitters.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(splitters)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece(model: GgufModel, tokens: list[str], types: list[int]) -> Tokenizer:
    scores: list[float] = list(model.field("tokenizer.ggml.scores", [0.0] * len(tokens)))
    vocab = _vocab(tokens)
    ranked = sorted(
        (i for i, t in enumerate(types) if t == _NORMAL and len(tokens[i]) > 1),
        key=lambda i: (-scores[i], i),
    )
    merges: list[tuple[str, str]] = []
    for i in ranked:
        token = tokens[i]
        splits = [
            (token[:cut], token[cut:])
            for cut in range(1, len(token))
            if token[:cut] in vocab and token[cut:] in vocab
        ]
        merges += sorted(splits, key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
    unknown = model.field("tokenizer.ggml.unknown_token_id")
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[int(unknown)] if unknown is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    steps: list[normalizers.Normalizer] = []
    if model.field("tokenizer.ggml.add_space_prefix", True):
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tokenizer


def bos_token_id(model: GgufModel) -> int:
    """The BOS id that a prompt starts with, or -1 where the metadata asks for none.

    llama.cpp adds one by default for SentencePiece vocabularies, not for byte-level BPE.
    """
    default = model.field("tokenizer.ggml.model") == "llama"
    bos = model.field("tokenizer.ggml.bos_token_id")
    if bos is None or not model.field("tokenizer.ggml.add_bos_token", default):
        return -1
    return int(bos)


# The instruct formats of architectures whose GGUFs often carry no template (Gemma 3's, as its
# tokenizer_config.json has it, without the BOS: `ModelTokenizer.encode` adds that).
_KNOWN_TEMPLATES = {
    "gemma3": (
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set prefix = messages[0]['content'] + '\n\n' -%}"
        "{%- set turns = messages[1:] -%}"
        "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
    ),
}
_INSTRUCT_MARKS = ("instruct", "-it", " it", "chat")


def chat_template(model: GgufModel) -> tuple[str, str]:
    """The chat template and where it comes from: ``gguf``, ``built-in`` or ``none``.

    A GGUF without one gets its architecture's known instruct template when its name says it is
    an instruct model (``general.finetune``, ``general.name``); otherwise it runs raw prompts only.
    """
    template = str(model.field("tokenizer.chat_template", ""))
    if template:
        return template, "gguf"
    described = " ".join(
        str(model.field(key, "")).lower() for key in ("general.finetune", "general.name")
    )
    finetune = str(model.field("general.finetune", "")).lower()
    instruct = finetune == "it" or any(mark in described for mark in _INSTRUCT_MARKS)
    if instruct and model.arch.name in _KNOWN_TEMPLATES:
        return _KNOWN_TEMPLATES[model.arch.name], "built-in"
    return "", "none"


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

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str,
        stop_ids: Sequence[int],
        bos_id: int = -1,
    ) -> None:
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self._stop_ids = tuple(stop_ids)
        self._bos_id = bos_id

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest) -> ModelTokenizer:
        path = model_dir / TOKENIZER_FILE
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for unreadable files
            raise ModelError(f"cannot load {path}: {err}") from None
        return cls(
            tokenizer, manifest.chat_template, manifest.stop_token_ids, manifest.bos_token_id
        )

    @property
    def stop_token_ids(self) -> Sequence[int]:
        return self._stop_ids

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special tokens written in it are parsed as such. A model whose
        metadata asks for a BOS gets one in front, unless the text starts with it already."""
        ids = list(self._tokenizer.encode(text, add_special_tokens=False).ids)
        if self._bos_id >= 0 and ids[:1] != [self._bos_id]:
            ids.insert(0, self._bos_id)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` without special tokens."""
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for ``(role, content)`` turns, ending with the assistant's turn opened."""
        if not self.chat_template:
            raise ModelError("this model has no chat template; send a plain prompt instead")
        return render_chat(self.chat_template, messages)
