"""Small deterministic stand-ins for the engine and tokenizer (the real ones are tested too).

`FakeEngine`'s logits favour token ``(last + 1) % vocab`` strongly, with a fixed pseudo-random spread
over the rest that depends only on the slot's token history, so sampling has something to choose
from and batched runs must match single runs exactly. `FakeTokenizer` maps token ``i`` to one
character (``chr(ord('a') + i)``), with a few multi-byte tokens to test UTF-8 handling.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from rbee.worker.interfaces import Logits

VOCAB = 32
EOS = 31
# Tokens 26 and 27 are the two UTF-8 bytes of "é": alone each is a cut character.
_E_ACUTE = "é".encode()


class FakeEngine:
    """An engine whose next-token logits follow the last token; records the batch sizes it ran."""

    def __init__(
        self,
        *,
        slots: int = 4,
        context_length: int = 64,
        vocab_size: int = VOCAB,
        flat: bool = False,
        step_delay_s: float = 0.0,
    ) -> None:
        self.slots = slots
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.flat = flat
        self.step_delay_s = step_delay_s
        self.history: dict[int, list[int]] = {}
        self.batch_sizes: list[int] = []
        self.prompt_runs: list[tuple[int, int]] = []
        self.released: list[int] = []
        self.fail_decode = False
        self.gate = threading.Event()
        self.gate.set()
        self._busy = threading.Lock()

    def _logits(self, history: Sequence[int]) -> Logits:
        seed = (len(history) * 7919 + sum(history) * 104729) % (2**32)
        noise = np.random.default_rng(seed).standard_normal(self.vocab_size).astype(np.float32)
        if self.flat:
            return np.zeros(self.vocab_size, dtype=np.float32) + noise * np.float32(1e-3)
        logits = noise
        logits[(history[-1] + 1) % self.vocab_size] += np.float32(8.0)
        return logits

    def prefill(self, slot: int, token_ids: Sequence[int]) -> Logits:
        assert self._busy.acquire(blocking=False), "engine used from two threads at once"
        try:
            if len(token_ids) > self.context_length:
                raise ValueError("prompt longer than the context")
            self.history[slot] = list(token_ids)
            self.prompt_runs.append((slot, len(token_ids)))
            return self._logits(self.history[slot])
        finally:
            self._busy.release()

    def extend(self, slot: int, token_ids: Sequence[int], start: int | None = None) -> Logits:
        assert self._busy.acquire(blocking=False), "engine used from two threads at once"
        try:
            held = self.history[slot]
            assert start is None or start <= len(held)
            self.history[slot] = held[:start] + list(token_ids)
            assert len(self.history[slot]) <= self.context_length
            self.prompt_runs.append((slot, len(token_ids)))
            return self._logits(self.history[slot])
        finally:
            self._busy.release()

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> Logits:
        assert self._busy.acquire(blocking=False), "engine used from two threads at once"
        try:
            assert self.gate.wait(10), "the test never opened the gate"
            if self.step_delay_s:
                threading.Event().wait(self.step_delay_s)
            if self.fail_decode:
                raise RuntimeError("fake decode failure")
            self.batch_sizes.append(len(slots))
            rows = []
            for slot, token in zip(slots, token_ids, strict=True):
                self.history[slot].append(token)
                assert len(self.history[slot]) <= self.context_length
                rows.append(self._logits(self.history[slot]))
            return np.stack(rows)
        finally:
            self._busy.release()

    def release(self, slot: int) -> None:
        self.released.append(slot)

    def length(self, slot: int) -> int:
        return len(self.history[slot])


class FakeTokenizer:
    """Token ``i < 26`` is the letter ``chr(97 + i)``; 26 and 27 are the bytes of "é"; 31 is EOS."""

    def __init__(self, stop_token_ids: Sequence[int] = (EOS,)) -> None:
        self.stop_token_ids = stop_token_ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for ch in text:
            if ch == "é":
                ids += [26, 27]
            elif "a" <= ch <= "z":
                ids.append(ord(ch) - ord("a"))
            else:
                ids.append(28)
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        data = bytearray()
        for i in token_ids:
            if i < 26:
                data.append(ord("a") + i)
            elif i in (26, 27):
                data.append(_E_ACUTE[i - 26])
            elif i == 28:
                data.append(ord(" "))
        return data.decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> str:
        return "".join(content for _, content in messages)
