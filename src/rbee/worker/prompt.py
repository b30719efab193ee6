"""From an `InferenceRequest` to the prompt's token ids, refused before any work if it cannot run."""

from __future__ import annotations

from rbee.errors import UsageError
from rbee.wire.worker import InferenceRequest
from rbee.worker.interfaces import TokenizerLike

__all__ = ["prompt_ids"]


def prompt_ids(
    tokenizer: TokenizerLike, request: InferenceRequest, context_length: int
) -> list[int]:
    """Render ``messages`` with the chat template (or take ``prompt`` as is) and encode it.

    A request that resumes a generation gets its generated tokens appended (`Resume`). A prompt
    must leave room for at least one generated token: ``UsageError`` (a 400) otherwise.
    """
    if request.messages is not None:
        text = tokenizer.render_chat([(m.role, m.content) for m in request.messages])
    else:
        text = request.prompt or ""
    ids = tokenizer.encode(text)
    if not ids:
        raise UsageError("invalid request body: the prompt is empty")
    what = "the prompt"
    if request.resume is not None:
        ids += request.resume.emitted_ids
        what = "the prompt with the tokens to resume from"
    if len(ids) >= context_length:
        raise UsageError(
            f"invalid request body: {what} is {len(ids)} tokens, longer than the model's "
            f"context of {context_length} tokens allows (at most {context_length - 1})",
            param="prompt" if request.messages is None else "messages",
            code="context_length_exceeded",
        )
    return ids
