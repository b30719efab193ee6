"""Policy drafts: check one, preview it on sample jobs, replay the logged decisions, apply it.

What ``rbee policy check|replay`` do on a file, done on text the web page sends
(`rbee.wire.ui`). A draft is compiled afresh each time; nothing here changes the running
policy but `apply`, which writes the draft where the queen's policy file lives and reloads it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from rbee.decisions import Decision, Reject, Scheduler, kind_target
from rbee.errors import ForbiddenError, PolicyError, UsageError
from rbee.policy import CompiledPolicy, PolicyHost, load_source
from rbee.policy.cases import describe
from rbee.wire.queen import DecisionRecord, JobView, PolicyStatus, Snapshot
from rbee.wire.ui import (
    DecisionSummary,
    PolicyCheck,
    PolicyFormat,
    PolicyPreview,
    PolicyProblem,
    PolicyReplay,
    PreviewRow,
    ReplayRow,
)

__all__ = [
    "APPLIED_FILE",
    "apply",
    "check",
    "compile_draft",
    "policy_text",
    "preview",
    "recorded",
    "replay",
    "summarize",
]

# Where an applied draft goes when the queen ran a built-in policy (next to its database); YAML
# rules go to the same name with ``.yaml``.
APPLIED_FILE = "applied-policy.rhai"
# A draft's name in messages; its suffix tells `load_source` which form the text is in.
_NAMES: dict[PolicyFormat, str] = {"rhai": "<draft>", "yaml": "<draft>.yaml"}


def _rules() -> ModuleType:
    """`rbee.policy.rules`, which compiles YAML rules; a `UsageError` where it is missing."""
    try:
        return importlib.import_module("rbee.policy.rules")
    except ImportError:
        raise UsageError(
            "invalid request body: this queen does not read YAML rules - at `$.format`"
        ) from None


def _load(source: str, format: PolicyFormat) -> CompiledPolicy:
    """The draft compiled; `PolicyError` at its line and column (in the YAML, for rules)."""
    if format == "yaml":
        _rules()
    return load_source(source, _NAMES[format])


def policy_text(source: str, format: PolicyFormat) -> str:
    """The draft in the policy language: YAML rules compiled to it (`PolicyError` if they do not)."""
    if format == "rhai":
        return source
    text: str = _rules().compile_rules(source, _NAMES[format])
    return text


def compile_draft(source: str, format: PolicyFormat = "rhai") -> CompiledPolicy:
    """The draft compiled; a `UsageError` (400) naming its line and column when it does not."""
    try:
        return _load(source, format)
    except PolicyError as err:
        raise UsageError(f"the draft does not compile: {_first_line(err)}") from None


def _first_line(err: PolicyError) -> str:
    return str(err).splitlines()[0]


def _problem(err: PolicyError) -> PolicyProblem:
    return PolicyProblem(message=err.message, line=err.line, column=err.column)


def check(source: str, format: PolicyFormat = "rhai") -> PolicyCheck:
    """Whether the draft compiles, and if not, where and why."""
    try:
        compiled = _load(source, format)
    except PolicyError as err:
        return PolicyCheck(ok=False, error=_problem(err))
    return PolicyCheck(ok=True, name=compiled.name, lines=source.count("\n") + 1)


def summarize(scheduler: Scheduler, job: JobView, snapshot: Snapshot) -> DecisionSummary:
    """``scheduler``'s decision for ``job`` on ``snapshot``; a policy error is a decision too."""
    try:
        decision: Decision = scheduler.schedule(job, snapshot)
    except PolicyError as err:
        first = _first_line(err)
        return DecisionSummary(kind="error", text=f"error: {first}", reasons=[first])
    kind, target = kind_target(decision)
    reasons = list(decision.reasons)
    if isinstance(decision, Reject):
        reasons.append(decision.reason)
    return DecisionSummary(kind=kind, target=target, text=describe(decision), reasons=reasons)


def preview(
    draft: CompiledPolicy, running: Scheduler, jobs: Sequence[JobView], snapshot: Snapshot
) -> PolicyPreview:
    """The draft's and the running policy's decisions for each job on the live ``snapshot``."""
    rows = []
    for job in jobs:
        now, new = summarize(running, job, snapshot), summarize(draft, job, snapshot)
        changed = (now.kind, now.target) != (new.kind, new.target)
        rows.append(PreviewRow(job=job, running=now, draft=new, changed=changed))
    return PolicyPreview(
        policy=running.name, workers=len(snapshot.workers), hives=len(snapshot.hives), rows=rows
    )


def recorded(record: DecisionRecord) -> str:
    """A logged decision in the form `replay` compares: ``route w1``, ``spawn h1``, ``queue``."""
    return f"{record.kind} {record.target}" if record.target else record.kind


def replay(draft: Scheduler, records: Sequence[DecisionRecord]) -> PolicyReplay:
    """The draft on each logged decision's job and snapshot, and where it would choose otherwise."""
    rows = []
    for record in records:
        now = summarize(draft, record.job, record.snapshot)
        short = f"{now.kind} {now.target}" if now.target else now.kind
        was = recorded(record)
        rows.append(
            ReplayRow(
                job_id=record.job_id, model=record.job.model, was=was, now=now, changed=short != was
            )
        )
    return PolicyReplay(
        replayed=len(rows),
        changed=sum(r.changed for r in rows),
        errors=sum(r.now.kind == "error" for r in rows),
        rows=rows,
    )


def _write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: a reload never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(
    current: Scheduler, source: str, format: PolicyFormat, *, locked: bool, default_path: Path
) -> tuple[PolicyHost, PolicyStatus]:
    """Make the draft the queen's policy: the host to schedule with from now on, and its status.

    A queen that runs a policy file gets the draft written into that file and reloads it (a YAML
    draft into a policy-language file as the text it compiles to; a YAML rules file takes only
    YAML); one that runs a built-in policy gets a new file at ``default_path`` (``.yaml`` for
    rules). `ForbiddenError` when the policy is locked; `UsageError` (nothing written) for a
    draft that does not compile.
    """
    if locked or (isinstance(current, PolicyHost) and current.locked):
        raise ForbiddenError(
            "the policy is locked (platform mode): it cannot be changed from the API",
            "policy_locked",
        )
    compile_draft(source, format)
    if not isinstance(current, PolicyHost):
        path = default_path.with_suffix(".yaml") if format == "yaml" else default_path
        _write(path, source)
        host = PolicyHost(path)
        return host, host.status()
    if current.path.suffix.lower() in (".yaml", ".yml"):
        if format != "yaml":
            raise UsageError(
                f"invalid request body: the queen's policy file {current.path} holds YAML "
                "rules; apply a YAML draft - at `$.format`"
            )
        _write(current.path, source)
    else:
        _write(current.path, policy_text(source, format))
    error = current.reload_if_changed()
    if error is not None:
        raise error
    return current, current.status()
