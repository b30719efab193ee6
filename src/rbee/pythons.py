"""The CPython versions rbee runs on, for the checks made before a hive starts on a host."""

from __future__ import annotations

__all__ = ["SUPPORTED", "is_supported"]

SUPPORTED: tuple[tuple[int, int], ...] = ((3, 10), (3, 11), (3, 12), (3, 13))


def is_supported(v: tuple[int, int]) -> bool:
    """Whether CPython ``major.minor`` is one rbee runs on."""
    return v in SUPPORTED
