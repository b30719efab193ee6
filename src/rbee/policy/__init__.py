"""Scheduling policies written in rbee's small Rhai-like language (see docs/policies.md).

``load_file(path)`` parses and compiles a policy into a `CompiledPolicy`, which implements
`rbee.queen.scheduler.Scheduler`. `PolicyHost` is what the queen holds: the compiled policy of a
file, reloaded when the file changes (the queen's dispatcher owns the fallback for run-time errors). `Limits` bounds what a script may cost.

Modules: ``grammar.lark`` (the syntax), `parse` (text -> frozen tree), `compile` (tree -> closures),
`runtime` (limits, meter, values), `helpers` (fields, methods, functions), `host`, `cases` (golden
case files for ``rbee policy test``).
"""

from rbee.policy.compile import CompiledPolicy, RunStats
from rbee.policy.host import PolicyHost, PolicyStatus, load_file, load_source
from rbee.policy.runtime import Limits

__all__ = [
    "CompiledPolicy",
    "Limits",
    "PolicyHost",
    "PolicyStatus",
    "RunStats",
    "load_file",
    "load_source",
]
