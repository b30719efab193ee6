"""From generated token ids to the text pieces a client sees.

`Detokenizer` turns ids into pieces without ever cutting a UTF-8 character (byte-level tokens can
split one across two tokens). `StopMatcher` ends the text at the first stop string and never emits
any part of it, holding back text that might be the start of a stop string until it knows.
"""

from __future__ import annotations

from collections.abc import Sequence

from rbee.worker.interfaces import TokenizerLike

__all__ = ["Detokenizer", "StopMatcher"]

_REPLACEMENT = "\ufffd"


class Detokenizer:
    """Incremental decoding: each new token gives the text it adds, or "" while a character is cut.

    Decoding a window that starts a few tokens back (``_prefix``) keeps tokenizers that change a
    token's text by its neighbours (leading spaces) right; the window moves on with every piece.
    """

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the new complete text (possibly empty)."""
        self._ids.append(token_id)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still pending at the end (a cut character comes out as U+FFFD)."""
        before = self._tokenizer.decode(self._ids[self._prefix : self._read])
        after = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""


class StopMatcher:
    """Cuts generated text at the first of ``stops``; the stop string itself is never emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the text that is now safe to emit. Sets ``stopped`` at a stop string."""
        if self.stopped:
            return ""
        text = self._held + piece
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        keep = self._longest_stop_prefix_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The held-back text, at the end of a generation that did not stop on a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that some stop string starts with."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if stop.startswith(text[len(text) - n :]):
                    best = n
                    break
        return best
