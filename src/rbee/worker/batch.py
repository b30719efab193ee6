"""Continuous batching, the synchronous part: one `Batch.step` advances every active sequence.

A step first feeds each running sequence its last token in one batched ``engine.decode`` and samples
the next, then runs the prompts of admitted sequences (``engine.prefill``) and samples their first
token. While other sequences are decoding, a prompt runs in pieces of at most ``prefill_chunk``
tokens per step (``engine.extend``), so that a long prompt delays the others' next token by one
piece rather than by all of it; alone, a prompt runs at once, which is fastest. A sequence leaves
the batch (its slot released) the moment it finishes or is cancelled, without waiting for the
others.

A slot's cache outlives its sequence: the batch remembers the tokens it holds, and a prompt that
begins with them (the next turn of a chat, a shared system prompt) runs only the rest;
`Batch.best_slot` finds such a slot.

A resumed sequence (`Admit.resumed`) has the tokens another worker generated at the end of its
prompt: they are replayed through the detokenizer and the stop matcher without emitting their text
(the client has it), so that text cut across the seam (a character, a possible stop string) comes
out whole, and sampling continues at their position. Each `Token` names the ids it covers, which
is what a later resume needs.

A token's random draw depends only on its sequence's seed and its position (`rbee.worker.sampling`),
and batched logits equal single-sequence logits, so a sequence's text does not depend on what else
shares the batch. A request without a seed gets a random one here.

The scheduler calls `step` from a worker thread, one step at a time; nothing here touches trio.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Literal

from rbee.log import kv
from rbee.wire.worker import Finished, SamplingParams, Started, Timings, Token, Usage
from rbee.worker.interfaces import EngineLike, Logits, TokenizerLike
from rbee.worker.sampling import sample
from rbee.worker.text import Detokenizer, StopMatcher

__all__ = ["PREFILL_CHUNK", "Admit", "Batch", "Event", "StepOutput"]

log = logging.getLogger(__name__)

# Prompt tokens per step while others decode: on two CPU cores about 90 ms, the pause the decoding
# sequences see, against some 0.7 ms a token more for the prompt than in one piece.
PREFILL_CHUNK = 128
# A cached prefix shorter than this is not worth taking a slot out of order for: the engine decodes
# the rows between the lowest and highest busy slot, idle ones included.
MIN_REUSE = 32

Event = Started | Token | Finished


@dataclasses.dataclass(frozen=True)
class Admit:
    """A request that got ``slot``; ``submitted`` is its arrival on the ``time.perf_counter`` clock.

    The last ``resumed`` of ``prompt_ids`` were generated already (by another worker).
    """

    key: str
    slot: int
    prompt_ids: Sequence[int]
    params: SamplingParams
    submitted: float
    resumed: int = 0


@dataclasses.dataclass
class StepOutput:
    """What one step produced, by request key, and which slots it gave back."""

    events: dict[str, list[Event]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    cancelled: list[str] = dataclasses.field(default_factory=list)
    freed: list[int] = dataclasses.field(default_factory=list)

    def emit(self, key: str, event: Event) -> None:
        self.events.setdefault(key, []).append(event)


@dataclasses.dataclass
class _Sequence:
    key: str
    slot: int
    params: SamplingParams
    seed: int
    seen: set[int]
    detokenizer: Detokenizer
    stops: StopMatcher
    prompt: Sequence[int]
    submitted: float
    admitted: float
    resumed: int = 0
    prefilled: float = 0.0
    generated: int = 0
    pieces: int = 0
    pending: int = -1
    fed: int = 0
    # Generated ids that no `Token` has named yet.
    unsent: list[int] = dataclasses.field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt) - self.resumed

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


class Batch:
    """The sequences currently holding a slot of ``engine``."""

    def __init__(
        self,
        engine: EngineLike,
        tokenizer: TokenizerLike,
        clock: Callable[[], float] = time.perf_counter,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        self._engine = engine
        self._prefill_chunk = prefill_chunk
        self._tokenizer = tokenizer
        self._stop_ids = frozenset(tokenizer.stop_token_ids)
        self._clock = clock
        self._active: dict[str, _Sequence] = {}
        self.step_ms = 0.0
        # The tokens whose keys and values each slot's cache holds, from position 0.
        self._cached: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self._active)

    def reset(self) -> None:
        """Drop every sequence and release its slot (after a failure left the batch unknown)."""
        for seq in self._active.values():
            self._release(seq, StepOutput())
        self._active.clear()
        self._cached.clear()

    def best_slot(self, free: Sequence[int], prompt_ids: Sequence[int]) -> int:
        """The free slot whose cache holds the longest start of ``prompt_ids``, else the lowest."""
        best, reused = min(free), 0
        for slot in free:
            n = _common_prefix(self._cached.get(slot, ()), prompt_ids)
            if n >= MIN_REUSE and (n, -slot) > (reused, -best):
                best, reused = slot, n
        return best

    def step(self, admit: Sequence[Admit] = (), cancel: Sequence[str] = ()) -> StepOutput:
        """Drop ``cancel``, decode one token for every running sequence, then start ``admit``."""
        began = self._clock()
        out = StepOutput()
        for key in cancel:
            seq = self._active.pop(key, None)
            if seq is not None:
                self._release(seq, out)
                out.cancelled.append(key)
        self._decode(out)
        for request in admit:
            self._admit(request, out)
        self._prefill(out)
        if self._active or admit:
            # Smoothed, but quick to follow a slower batch: the stall bound readers derive from it.
            ms = 1000 * (self._clock() - began)
            self.step_ms = ms if not self.step_ms else max(ms, 0.8 * self.step_ms + 0.2 * ms)
        return out

    def _decode(self, out: StepOutput) -> None:
        running = [s for s in self._active.values() if not s.prefilling]
        if not running:
            return
        try:
            logits = self._engine.decode([s.slot for s in running], [s.pending for s in running])
        except Exception as err:
            log.exception("decode failed", extra=kv(sequences=len(running)))
            for seq in running:
                self._fail(seq, f"decode failed: {err}", out)
            return
        for seq in running:
            self._cached[seq.slot].append(seq.pending)
        for seq, row in zip(running, logits, strict=True):
            self._advance(seq, row, out)

    def _admit(self, request: Admit, out: StepOutput) -> None:
        now = self._clock()
        seq = _Sequence(
            key=request.key,
            slot=request.slot,
            params=request.params,
            seed=secrets.randbits(64) if request.params.seed is None else request.params.seed,
            seen=set(request.prompt_ids),
            detokenizer=Detokenizer(self._tokenizer),
            stops=StopMatcher(request.params.stop),
            prompt=request.prompt_ids,
            submitted=request.submitted,
            admitted=now,
            resumed=request.resumed,
        )
        self._replay(seq)
        # At least the prompt's last token runs: its logits give the first token.
        held = self._cached.get(seq.slot, [])
        seq.fed = max(0, min(_common_prefix(held, seq.prompt), len(seq.prompt) - 1))
        self._cached[seq.slot] = held[: seq.fed]
        self._active[seq.key] = seq
        out.emit(seq.key, Started(step_ms=round(self.step_ms, 3)))

    def _replay(self, seq: _Sequence) -> None:
        """Bring a resumed sequence's text state to where the first worker's stream left it."""
        for token in seq.prompt[len(seq.prompt) - seq.resumed :]:
            if seq.stops.feed(seq.detokenizer.push(token)):
                seq.pieces += 1

    def _prefill(self, out: StepOutput) -> None:
        """Run the prompts waiting, oldest first: all of them, or one piece while others decode."""
        waiting = [s for s in self._active.values() if s.prefilling]
        alone = len(waiting) == len(self._active)
        budget = self._prefill_chunk
        for seq in waiting:
            if not alone and budget <= 0:
                break
            end = len(seq.prompt) if alone else min(len(seq.prompt), seq.fed + budget)
            budget -= end - seq.fed
            self._run_prompt(seq, end, out)

    def _run_prompt(self, seq: _Sequence, end: int, out: StepOutput) -> None:
        piece = seq.prompt[seq.fed : end]
        try:
            if seq.fed == 0:
                logits = self._engine.prefill(seq.slot, piece)
            else:
                logits = self._engine.extend(seq.slot, piece, start=seq.fed)
        except Exception as err:
            log.exception("prefill failed", extra=kv(job=seq.key, prompt_tokens=seq.prompt_tokens))
            self._fail(seq, f"prefill failed: {err}", out)
            return
        self._cached[seq.slot].extend(piece)
        seq.fed = end
        if not seq.prefilling:
            seq.prefilled = self._clock()
            self._advance(seq, logits, out)

    def _advance(self, seq: _Sequence, logits: Logits, out: StepOutput) -> None:
        """Sample one token for ``seq``, emit its text, and finish the sequence if it is done."""
        token = sample(logits, seq.params, seq.seed, seq.resumed + seq.generated, seq.seen)
        seq.generated += 1
        if token in self._stop_ids:
            self._finish(seq, "stop", out)
            return
        seq.seen.add(token)
        seq.unsent.append(token)
        self._emit(seq, seq.stops.feed(seq.detokenizer.push(token)), out)
        if seq.stops.stopped:
            self._finish(seq, "stop", out)
        elif (
            seq.generated >= seq.params.max_tokens
            or self._engine.length(seq.slot) >= self._engine.context_length
        ):
            self._finish(seq, "length", out)
        else:
            seq.pending = token

    def _emit(self, seq: _Sequence, text: str, out: StepOutput) -> None:
        if text:
            out.emit(seq.key, Token(t=text, i=seq.pieces, ids=seq.unsent))
            seq.unsent = []
            seq.pieces += 1

    def _finish(self, seq: _Sequence, reason: Literal["stop", "length"], out: StepOutput) -> None:
        # Text held back as a possible stop-string start, or a cut character, is still owed.
        tail = seq.stops.feed(seq.detokenizer.flush())
        if seq.stops.stopped:
            reason = "stop"
        else:
            tail += seq.stops.flush()
        self._emit(seq, tail, out)
        end = self._clock()
        decode_s = end - seq.prefilled
        timings = Timings(
            queue_ms=1000 * (seq.admitted - seq.submitted),
            prefill_ms=1000 * (seq.prefilled - seq.admitted),
            ttft_ms=1000 * (seq.prefilled - seq.submitted),
            decode_ms=1000 * decode_s,
            tokens_per_s=(seq.generated - 1) / decode_s if seq.generated > 1 and decode_s else 0.0,
        )
        completion = seq.resumed + seq.generated
        usage = Usage(
            prompt_tokens=seq.prompt_tokens,
            completion_tokens=completion,
            total_tokens=seq.prompt_tokens + completion,
        )
        out.emit(seq.key, Finished(finish_reason=reason, usage=usage, timings=timings))
        del self._active[seq.key]
        self._release(seq, out)

    def _fail(self, seq: _Sequence, message: str, out: StepOutput) -> None:
        self._active.pop(seq.key, None)
        self._cached.pop(seq.slot, None)  # what the cache holds is unknown now
        out.errors[seq.key] = message
        self._release(seq, out)

    def _release(self, seq: _Sequence, out: StepOutput) -> None:
        try:
            self._engine.release(seq.slot)
        except Exception:
            log.exception("releasing a slot failed", extra=kv(slot=seq.slot))
        out.freed.append(seq.slot)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
