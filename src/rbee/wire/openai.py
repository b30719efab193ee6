"""The OpenAI-compatible subset the queen serves, as OpenAI's clients send and parse it.

``GET /v1/models`` (`ModelList`), ``POST /v1/chat/completions`` (`ChatCompletionRequest` ->
`ChatCompletion`, or SSE `ChatCompletionChunk` events then ``[DONE]``) and ``POST /v1/completions``
(`CompletionRequest` -> `Completion`, streamed as `Completion` events). Fields rbee does not use
(``frequency_penalty``, ``user``, ...) are accepted and ignored, as OpenAI's clients send them.
Errors use `rbee.wire.ErrorBody`, which is OpenAI's error shape.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ChatMessageOut",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "ContentPart",
    "Delta",
    "Model",
    "ModelList",
    "StreamOptions",
    "Usage",
]

Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0)]
MaxTokens = Annotated[int, Meta(ge=1, le=32768)]
Stop = str | Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=16)]


class ContentPart(Struct, frozen=True):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    type: Literal["text"]
    text: str


class ChatMessageIn(Struct, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Struct, frozen=True):
    include_usage: bool = False


class _Sampling(Struct, frozen=True, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=200)]
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None
    stop: Stop | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=1)] = 1

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_Sampling, frozen=True, kw_only=True):
    messages: Annotated[list[ChatMessageIn], Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None


class CompletionRequest(_Sampling, frozen=True, kw_only=True):
    # OpenAI accepts a batch of prompts; rbee serves one per request.
    prompt: str | Annotated[list[str], Meta(min_length=1, max_length=1)]

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(Struct, frozen=True):
    content: str
    role: Literal["assistant"] = "assistant"


class ChatChoice(Struct, frozen=True):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(Struct, frozen=True, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: Literal["chat.completion"] = "chat.completion"


class Delta(Struct, frozen=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(Struct, frozen=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Struct, frozen=True, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


class CompletionChoice(Struct, frozen=True):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class Completion(Struct, frozen=True, kw_only=True):
    """A whole completion, or one streamed piece of it (``usage`` then only on the last)."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    object: Literal["text_completion"] = "text_completion"


class Model(Struct, frozen=True):
    id: str
    created: int = 0
    owned_by: str = "rbee"
    object: Literal["model"] = "model"


class ModelList(Struct, frozen=True):
    data: list[Model]
    object: Literal["list"] = "list"
