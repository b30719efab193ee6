"""The CPython versions rbee runs on, and the one line that refuses any other.

A leaf module, imported by the CLI's start check, by the SSH preflight and, copied as it is, by the
zipapp's bootstrap before anything else runs. So it imports nothing and keeps to syntax that old
Pythons still parse: a Python outside the range must get the refusal, not a ``SyntaxError``.
"""

from __future__ import annotations

__all__ = ["SUPPORTED", "describe", "is_supported", "refusal"]

# Every version here has its own native wheels (ONNX Runtime, numpy, tokenizers...) in rbee.pyz.
SUPPORTED = ((3, 10), (3, 11), (3, 12), (3, 13))


def is_supported(version: tuple[object, ...]) -> bool:
    """Whether a CPython ``(major, minor, ...)`` is one rbee runs on (only the first two count)."""
    return tuple(version[:2]) in SUPPORTED


def describe() -> str:
    """The supported versions in words: ``3.10, 3.11, 3.12 or 3.13``."""
    names = [f"{major}.{minor}" for major, minor in SUPPORTED]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def refusal(found: str, where: str) -> str:
    """The one line for an interpreter rbee does not run on.

    ``found`` names it (``Python 3.9.18``, ``PyPy 3.10.14``), ``where`` is its path.
    """
    return f"rbee needs CPython {describe()}; this is {found} at {where}"
