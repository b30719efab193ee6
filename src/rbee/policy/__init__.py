"""Scheduling policies written in rbee's small Rhai-like language (see docs/policies.md).

``load_file(path)`` parses and compiles a policy into a `CompiledPolicy`, which implements
`rbee.decisions.Scheduler`. `PolicyHost` is what the queen holds: the compiled policy of a file,
reloaded when the file changes (the queen's dispatcher owns the fallback for run-time errors).
`Limits` bounds what a script may cost. Nothing here imports the queen.

Modules: ``grammar.lark`` (the syntax), `parse` (text -> frozen tree), `compile` (tree -> closures),
`limits` (what a script may cost), `runtime` (meter, values), `helpers` (fields, methods,
functions), `host`, `cases` (golden case files for ``rbee policy test``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rbee.policy.limits import Limits

if TYPE_CHECKING:
    from rbee.policy.compile import CompiledPolicy, RunStats
    from rbee.policy.host import PolicyHost, PolicyStatus, load_file, load_source

__all__ = [
    "CompiledPolicy",
    "Limits",
    "PolicyHost",
    "PolicyStatus",
    "RunStats",
    "load_file",
    "load_source",
]

# Loaded on first use, so that importing `parse` or `limits` does not load the compiler, the
# runtime and trio along with them.
_LAZY = {
    "CompiledPolicy": "rbee.policy.compile",
    "RunStats": "rbee.policy.compile",
    "PolicyHost": "rbee.policy.host",
    "PolicyStatus": "rbee.policy.host",
    "load_file": "rbee.policy.host",
    "load_source": "rbee.policy.host",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
