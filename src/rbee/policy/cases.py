"""Golden case files for ``rbee policy test``: job + cluster -> expected decision.

A case file is TOML or JSON. Top-level ``workers``, ``hives`` and ``tenants`` (their quota use,
for the ``tenant_*`` helpers) are the cluster every case uses unless it brings its own; each ``[[case]]`` has a ``name``, a ``job`` (``id`` optional) and an
``expect`` table::

    [[workers]]
    id = "w1"
    hive = "h1"
    model = "smollm2"
    device = "cpu"
    state = "ready"
    slots_total = 4
    slots_free = 4

    [[case]]
    name = "routes to the only worker"
    job = { model = "smollm2" }
    expect = { kind = "route", target = "w1" }

``expect`` keys: ``kind`` (route, spawn, queue, reject), ``target`` (worker id or hive name),
``model`` and ``device`` (spawn), ``reason`` (text the reject reason must contain), ``error``
(text the `PolicyError` must contain: the case expects the policy to fail).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from rbee.decisions import Decision, Queue, Reject, Route, Scheduler, Spawn, kind_target
from rbee.errors import PolicyError, UsageError
from rbee.wire.queen import DecisionKind, HiveView, JobView, Snapshot, TenantView, WorkerView

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["Case", "CaseResult", "Expect", "describe", "load_cases", "run_case", "summary"]


class Expect(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: DecisionKind | None = None
    target: str | None = None
    model: str | None = None
    device: str | None = None
    reason: str | None = None
    error: str | None = None


class Case(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    job: JobView
    expect: Expect
    workers: tuple[WorkerView, ...] | None = None
    hives: tuple[HiveView, ...] | None = None
    tenants: tuple[TenantView, ...] | None = None


class _CaseFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    case: list[Case]
    workers: tuple[WorkerView, ...] = ()
    hives: tuple[HiveView, ...] = ()
    tenants: tuple[TenantView, ...] = ()


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    passed: bool
    got: str
    problem: str | None
    reasons: tuple[str, ...]


def load_cases(path: Path) -> list[tuple[Case, Snapshot]]:
    """Each case of the file at ``path`` with the cluster it runs against."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read case file {path}: {err}") from None
    try:
        raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(
            f"case file {path} is not valid {path.suffix[1:].upper() or 'TOML'}: {err}"
        ) from None
    if isinstance(raw, dict):
        for i, case in enumerate(raw.get("case") or []):
            if isinstance(case, dict) and isinstance(case.get("job"), dict):
                case["job"].setdefault("id", f"job-case-{i + 1}")
    try:
        parsed = msgspec.convert(raw, _CaseFile)
    except msgspec.ValidationError as err:
        raise UsageError(f"case file {path}: {err}") from None
    return [
        (
            case,
            Snapshot(
                workers=parsed.workers if case.workers is None else case.workers,
                hives=parsed.hives if case.hives is None else case.hives,
                tenants=parsed.tenants if case.tenants is None else case.tenants,
            ),
        )
        for case in parsed.case
    ]


def describe(decision: Decision) -> str:
    """One line for a decision: ``route w1``, ``spawn smollm2 on h1 (cpu)``, ``reject: why``."""
    if isinstance(decision, Route):
        return f"route {decision.worker_id}"
    if isinstance(decision, Spawn):
        return f"spawn {decision.model} on {decision.hive} ({decision.device})"
    if isinstance(decision, Queue):
        return "queue"
    return f"reject: {decision.reason}"


def _mismatch(expect: Expect, decision: Decision) -> str | None:
    kind, target = kind_target(decision)
    if expect.error is not None:
        return f"expected a policy error containing {expect.error!r}"
    if expect.kind is not None and expect.kind != kind:
        return f"expected {expect.kind}"
    if expect.target is not None and expect.target != target:
        return f"expected {expect.kind or kind} {expect.target}"
    if isinstance(decision, Spawn):
        if expect.model is not None and expect.model != decision.model:
            return f"expected model {expect.model}"
        if expect.device is not None and expect.device != decision.device:
            return f"expected device {expect.device}"
    if expect.reason is not None and (
        not isinstance(decision, Reject) or expect.reason not in decision.reason
    ):
        return f"expected a reject reason containing {expect.reason!r}"
    return None


def run_case(policy: Scheduler, case: Case, snapshot: Snapshot) -> CaseResult:
    """Run ``policy`` on one case and compare with what the case expects."""
    try:
        decision = policy.schedule(case.job, snapshot)
    except PolicyError as err:
        first = str(err).splitlines()[0]
        if case.expect.error is not None and case.expect.error in str(err):
            return CaseResult(case.name, True, f"error: {first}", None, ())
        return CaseResult(case.name, False, f"error: {first}", "expected a decision", ())
    problem = _mismatch(case.expect, decision)
    return CaseResult(case.name, problem is None, describe(decision), problem, decision.reasons)


def summary(results: list[CaseResult]) -> str:
    failed = sum(not r.passed for r in results)
    return f"{len(results) - failed} passed, {failed} failed"
