"""What one policy may cost: the sandbox's bounds, apart from the runtime that enforces them.

A leaf (it imports nothing of rbee), so that the parser and the config can name the limits
without pulling in the evaluator.
"""

from __future__ import annotations

import dataclasses

__all__ = ["INT_MAX", "Limits"]

# The largest integer a script may hold: a literal, a sum or a product beyond it is an error.
INT_MAX = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one policy may cost. Parse-time limits first, then run-time ones."""

    max_source_bytes: int = 256 * 1024
    max_nesting: int = 64
    max_operations: int = 1_000_000
    deadline_ms: float = 50.0
    max_call_depth: int = 32
    max_string_len: int = 65_536
    max_array_len: int = 10_000
    max_elements: int = 1_000_000
    max_trace: int = 32
