"""The worker's HTTP API: one call starts a generation, a second one streams it.

``POST /v1/inference`` takes an `InferenceRequest` and answers `InferenceAccepted` (202; 429 with
``Retry-After`` when every slot and the wait queue are full, 503 while the model loads);
``GET /v1/inference/{id}/stream`` is SSE: `Started`, one `Token` per piece of text, one `Finished`,
then ``[DONE]`` (or ``[ERROR] <message>`` / ``[CANCELLED]``); a stream can be read once, and a job
whose stream is not opened within 30 s is dropped. A ``POST`` with ``Accept: text/event-stream`` is
answered with that stream at once (200, the job id in the ``Rbee-Job-Id`` header); ``DELETE /v1/inference/{id}`` cancels (204 once
the slot is free); ``GET /v1/info`` answers `WorkerInfo`; ``GET /health`` answers `Health`.

A request with `Resume` continues a generation that another worker began (the queen sends it when
that worker died or stalled): the new worker picks up at the next position as if it had generated
the tokens itself, and its stream carries only the text that follows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "ChatMessage",
    "Finished",
    "Health",
    "InferenceAccepted",
    "InferenceRequest",
    "Precision",
    "Resume",
    "SamplingParams",
    "Started",
    "StreamEvent",
    "Timings",
    "Token",
    "Usage",
    "WorkerInfo",
    "prompt_chars",
    "sampling_fields",
    "stream_event_decoder",
]

Precision = Literal["int4", "fp16", "fp32"]
"""A graph of a model (`rbee.models.graph.PRECISIONS`)."""

FinishReason = Literal["stop", "length", "cancelled"]


class ChatMessage(Struct, frozen=True):
    """One chat turn; rendered with the model's own chat template."""

    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Meta(max_length=1_000_000)]


class SamplingParams(Struct, frozen=True, kw_only=True):
    """How to pick tokens. ``temperature`` 0 is greedy; the same ``seed`` gives the same text."""

    max_tokens: Annotated[int, Meta(ge=1, le=32768)] = 256
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] = 0.7
    top_k: Annotated[int, Meta(ge=0)] = 0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    repetition_penalty: Annotated[float, Meta(gt=0.0, le=10.0)] = 1.0
    seed: int | None = None
    stop: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=16)] = []


def prompt_chars(prompt: str | None, messages: Sequence[ChatMessage] | None) -> int:
    """How many characters of text a request brings: its ``prompt``, or its messages' contents."""
    if prompt is not None:
        return len(prompt)
    return sum(len(m.content) for m in messages or ())


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """The `SamplingParams` fields of ``params`` (or of any struct that extends it)."""
    return {name: getattr(params, name) for name in SamplingParams.__struct_fields__}


class Resume(Struct, frozen=True, kw_only=True):
    """The tokens generated so far, as the `Token` events' ``ids`` gave them, in order.

    The worker encodes the prompt as for a new request (the same model's tokenizer gives the same
    ids), runs it with these tokens appended, and generates from position ``len(emitted_ids)``;
    ``max_tokens`` counts only the tokens still to come. The text of ``emitted_ids`` is never sent
    again, and `Usage` covers the whole generation.
    """

    emitted_ids: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(min_length=1)]


class InferenceRequest(SamplingParams, frozen=True, kw_only=True):
    """Exactly one of ``prompt`` (raw text) or ``messages`` (chat, templated by the worker).

    ``resume`` continues a generation begun elsewhere (it needs a ``seed`` for sampled text to
    continue as it would have).
    """

    model: str | None = None
    prompt: Annotated[str, Meta(max_length=1_000_000)] | None = None
    messages: list[ChatMessage] | None = None
    resume: Resume | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise ValueError("'messages' must not be empty")

    def sampling(self) -> SamplingParams:
        """The sampling part alone."""
        return SamplingParams(**sampling_fields(self))


class InferenceAccepted(Struct, frozen=True):
    """Where to stream the generation that was just started."""

    job_id: str
    sse_url: str


class Usage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(Struct, frozen=True):
    """Milliseconds spent waiting for a slot, on the prompt, to the first token and decoding."""

    queue_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_ms: float
    tokens_per_s: float


class Started(Struct, frozen=True, tag="started", tag_field="type"):
    """The request has a slot and its prompt is being processed.

    ``step_ms`` is the worker's recent time for one batched step (0 before its first): a reader
    that hears nothing for many steps may take the worker to be stalled.
    """

    step_ms: float = 0.0


class Token(Struct, frozen=True, tag="token", tag_field="type"):
    """One generated piece of text; ``i`` counts from 0.

    ``ids`` are the tokens generated since the previous piece, this one's last: a piece can cover
    several (a character cut across tokens, text held back as the possible start of a stop
    string). Together they are what `Resume` takes.
    """

    t: str
    i: int
    ids: list[int] = []


class Finished(Struct, frozen=True, tag="finished", tag_field="type"):
    """The last event before ``[DONE]``."""

    finish_reason: FinishReason
    usage: Usage
    timings: Timings


StreamEvent = Started | Token | Finished

_event_decoder = msgspec.json.Decoder(StreamEvent)


def stream_event_decoder() -> msgspec.json.Decoder[StreamEvent]:
    """A decoder for the JSON payloads of a worker's stream."""
    return _event_decoder


class WorkerInfo(Struct, frozen=True, kw_only=True):
    """What a worker serves and how busy it is (``GET /v1/info``)."""

    model: str
    precision: str
    provider: str
    device: str
    context_length: int
    slots_total: int
    slots_free: int
    queue_depth: int
    pid: int
    version: str


class Health(Struct, frozen=True):
    status: Literal["loading", "ready"]
