"""Per-key quotas: requests and tokens per minute, concurrent jobs; held by the one queen.

Each key counts in fixed one-minute windows, the first starting at its first request and each
next one at the first request after the last ended. Admission counts the request and reserves
its prompt estimate plus ``max_tokens``; when the job ends its `Ticket` replaces the reservation
with the real prompt plus completion count (in the window it was made in; a window that has
ended already is not touched). A key over a limit is refused with `QuotaError` (429,
``Retry-After`` and the ``x-ratelimit-*`` headers); a request that alone asks for more tokens
than the key's whole minute is a 400 naming ``max_tokens``, since no wait would let it in.

The counters live in memory: a queen restart starts every key on a fresh minute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import trio

from rbee.errors import QuotaError, UsageError
from rbee.queen.keys import KeyRecord, Limits
from rbee.wire.queen import TenantView

__all__ = ["WINDOW_S", "Quotas", "Ticket"]

WINDOW_S = 60.0
_NONE: Limits = (0, 0, 0)


class _Usage:
    __slots__ = ("active", "requests", "start", "tokens")

    def __init__(self, start: float) -> None:
        self.start = start
        self.requests = 0
        self.tokens = 0
        self.active = 0


class Ticket:
    """One admitted job's share of its key's counters; `end` it exactly once."""

    __slots__ = ("_quotas", "key", "reserved", "window")

    def __init__(self, quotas: Quotas, key: str, window: float, reserved: int) -> None:
        self._quotas = quotas
        self.key = key
        self.window = window
        self.reserved = reserved

    def end(self, tokens: int | None) -> None:
        """The job ended, having used ``tokens`` (prompt plus completion; None: none known)."""
        self._quotas._end(self, tokens or 0)


class Quotas:
    """The counters of every key, on ``clock`` (the trio clock, so tests can jump it)."""

    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._tenant: dict[str, str] = {}

    def _current(self, key: KeyRecord, now: float) -> _Usage:
        usage = self._usage.get(key.name)
        if usage is None:
            usage = self._usage[key.name] = _Usage(now)
            self._tenant[key.name] = key.tenant
        elif now >= usage.start + WINDOW_S:
            usage.start, usage.requests, usage.tokens = now, 0, 0
        return usage

    def admit(self, key: KeyRecord, tokens: int) -> Ticket:
        """Count a request of ``key`` that may use ``tokens``; raise `QuotaError` if over."""
        now = self._clock()
        usage = self._current(key, now)
        if key.tpm and tokens > key.tpm:
            raise UsageError(
                f"this request may use {tokens} tokens (prompt plus max_tokens), more than key "
                f"{key.name!r} may use in a minute ({key.tpm}): lower max_tokens",
                param="max_tokens",
            )
        reset = usage.start + WINDOW_S - now
        if key.rpm and usage.requests >= key.rpm:
            self._refuse(key, usage, reset, f"{key.rpm} requests a minute")
        if key.tpm and usage.tokens + tokens > key.tpm:
            self._refuse(key, usage, reset, f"{key.tpm} tokens a minute")
        if key.concurrent and usage.active >= key.concurrent:
            raise QuotaError(
                f"key {key.name!r} has {usage.active} jobs running, its limit: wait for one to end",
                retry_after=1,
                headers=_headers(key, usage, reset),
            )
        usage.requests += 1
        usage.tokens += tokens
        usage.active += 1
        return Ticket(self, key.name, usage.start, tokens)

    def _refuse(self, key: KeyRecord, usage: _Usage, reset: float, limit: str) -> None:
        raise QuotaError(
            f"key {key.name!r} is over its quota of {limit}: retry in {math.ceil(reset)} s",
            retry_after=max(math.ceil(reset), 1),
            headers=_headers(key, usage, reset),
        )

    def _end(self, ticket: Ticket, tokens: int) -> None:
        usage = self._usage[ticket.key]
        usage.active -= 1
        if usage.start == ticket.window:
            usage.tokens = max(usage.tokens + tokens - ticket.reserved, 0)

    def headers(self, key: KeyRecord) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of ``key`` now (for answers that were let in)."""
        now = self._clock()
        usage = self._current(key, now)
        return _headers(key, usage, usage.start + WINDOW_S - now)

    def tenants(self, limits: Mapping[str, Limits]) -> tuple[TenantView, ...]:
        """The tenants' use this minute, by name: every tenant in ``limits`` (its keys' summed
        limits) and every other tenant whose keys were used this minute."""
        now = self._clock()
        sums: dict[str, list[int]] = {t: [0, 0, 0] for t in limits}
        for name, usage in list(self._usage.items()):
            fresh = now < usage.start + WINDOW_S
            if not fresh and not usage.active:
                # Nothing to show until it is used again, which starts a new window anyway.
                del self._usage[name], self._tenant[name]
                continue
            row = sums.setdefault(self._tenant[name], [0, 0, 0])
            if fresh:
                row[0] += usage.requests
                row[1] += usage.tokens
            row[2] += usage.active
        return tuple(
            TenantView(
                name=name,
                requests=row[0],
                tokens=row[1],
                concurrent=row[2],
                rpm=limits.get(name, _NONE)[0],
                tpm=limits.get(name, _NONE)[1],
                max_concurrent=limits.get(name, _NONE)[2],
            )
            for name, row in sorted(sums.items())
        )


def _headers(key: KeyRecord, usage: _Usage, reset: float) -> dict[str, str]:
    """LiteLLM's (and OpenAI's) names; a reset is in seconds, as ``"12s"``."""
    headers: dict[str, str] = {}
    reset_s = f"{max(math.ceil(reset), 0)}s"
    if key.rpm:
        headers["x-ratelimit-limit-requests"] = str(key.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(key.rpm - usage.requests, 0))
        headers["x-ratelimit-reset-requests"] = reset_s
    if key.tpm:
        headers["x-ratelimit-limit-tokens"] = str(key.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(key.tpm - usage.tokens, 0))
        headers["x-ratelimit-reset-tokens"] = reset_s
    return headers
