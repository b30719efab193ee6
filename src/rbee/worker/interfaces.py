"""What the batching loop needs from an engine and a tokenizer, as structural types.

`rbee.worker.engine.Engine` and the model's tokenizer satisfy these; so do the small deterministic
fakes of the unit tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["EngineLike", "Logits", "TokenizerLike"]

Logits = npt.NDArray[np.float32]


class EngineLike(Protocol):
    """A model with ``slots`` independent KV caches, run synchronously."""

    @property
    def context_length(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def prefill(self, slot: int, token_ids: Sequence[int]) -> Logits:
        """Reset ``slot``, run the prompt, return the logits ``[vocab]`` of its last position."""
        ...

    def extend(self, slot: int, token_ids: Sequence[int], start: int | None = None) -> Logits:
        """Run more of a prompt after the first ``start`` positions ``slot`` holds (default: all);
        the logits of its last position."""
        ...

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> Logits:
        """Feed one token to each slot in one batched run; logits ``[len(slots), vocab]``."""
        ...

    def release(self, slot: int) -> None:
        """The slot's sequence ended; what its cache holds may be built on by `extend`."""
        ...

    def length(self, slot: int) -> int:
        """How many positions of ``slot``'s cache are filled."""
        ...


class TokenizerLike(Protocol):
    """Text to ids and back, plus the model's chat template and end-of-turn tokens."""

    @property
    def stop_token_ids(self) -> Sequence[int]: ...

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; special tokens written in it (``<|im_start|>``) are parsed as such."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` without special tokens; a cut UTF-8 sequence shows as U+FFFD."""
        ...

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for ``(role, content)`` turns, ending with the assistant's turn opened."""
        ...
