"""The queen's web page API: its session, the live overview and the policy editor's routes.

``POST /ui/login`` takes a `UiLogin`, sets the session cookie and answers a `UiSession`, which
``GET /ui/session`` is too (kind ``none`` for a caller who must sign in first). ``GET /v1/ui/events`` streams one `Overview` a second as SSE.

Policy drafts (`PolicyDraft`): ``POST /v1/policy/check`` -> `PolicyCheck` (a draft that does not
compile is an answer, not an error: ``ok`` false and the `PolicyProblem`); ``POST
/v1/policy/preview`` (`PolicyPreviewRequest`) -> `PolicyPreview`, the draft and the running policy
on sample jobs against the live cluster snapshot; ``POST /v1/policy/replay`` (`PolicyReplayRequest`)
-> `PolicyReplay`, the draft on the last decisions the queen logged; ``POST /v1/policy/apply``
-> `rbee.wire.queen.PolicyStatus` (a 403 in platform mode); ``POST /v1/policy/compile`` ->
`PolicyCompiled`, the draft in the policy language (YAML rules compiled to it). ``GET /v1/policy`` is the running
`PolicySource`. ``GET /v1/workers/{id}/log`` is the worker's `rbee.wire.hive.WorkerLog`.
``POST /v1/hives/{name}/models/import`` (`ModelImport`) imports a GGUF file on that hive's host,
streaming the hive's `rbee.wire.hive.PullEvent` progress as SSE like a pull.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from rbee.wire.queen import DecisionKind, JobView, QueenStatus

__all__ = [
    "DecisionSummary",
    "ModelImport",
    "Overview",
    "PolicyCheck",
    "PolicyCompiled",
    "PolicyDraft",
    "PolicyPreview",
    "PolicyPreviewRequest",
    "PolicyProblem",
    "PolicyReplay",
    "PolicyReplayRequest",
    "PolicySource",
    "PreviewRow",
    "ReplayRow",
    "UiLogin",
    "UiSession",
]

PolicyFormat = Literal["rhai", "yaml"]
Source = Annotated[str, Meta(max_length=200_000)]


class UiLogin(Struct, frozen=True, kw_only=True):
    key: Annotated[str, Meta(min_length=1, max_length=500)]


class UiSession(Struct, frozen=True, kw_only=True):
    """Who the page's caller is (``kind`` as in `rbee.queen.auth.Caller`) and the queen's mode."""

    kind: str
    tenant: str
    platform: bool


class ModelImport(Struct, frozen=True, kw_only=True):
    """Import the GGUF file at ``path`` (on the hive's host) into its store as ``name``."""

    name: Annotated[str, Meta(min_length=1, max_length=80)]
    path: Annotated[str, Meta(min_length=1, max_length=4096)]


class Overview(Struct, frozen=True, kw_only=True):
    """What the overview page shows: the status and each worker's recent tokens per second."""

    at: float
    status: QueenStatus
    tokens_per_s: dict[str, float] = {}


class PolicyDraft(Struct, frozen=True, kw_only=True):
    source: Source
    format: PolicyFormat = "rhai"


class PolicyProblem(Struct, frozen=True, kw_only=True):
    """Why a draft does not compile; ``line`` and ``column`` are 1-based when known."""

    message: str
    line: int | None = None
    column: int | None = None


class PolicyCheck(Struct, frozen=True, kw_only=True):
    ok: bool
    name: str | None = None
    lines: int = 0
    error: PolicyProblem | None = None


class PolicyCompiled(Struct, frozen=True, kw_only=True):
    source: str


class DecisionSummary(Struct, frozen=True, kw_only=True):
    """One decision in short: its kind, what it names, a line for it and its reasons."""

    kind: DecisionKind | Literal["error"]
    target: str | None = None
    text: str
    reasons: list[str] = []


class PolicyPreviewRequest(Struct, frozen=True, kw_only=True):
    source: Source
    format: PolicyFormat = "rhai"
    jobs: Annotated[list[JobView], Meta(min_length=1, max_length=100)]


class PreviewRow(Struct, frozen=True, kw_only=True):
    job: JobView
    running: DecisionSummary
    draft: DecisionSummary
    changed: bool


class PolicyPreview(Struct, frozen=True, kw_only=True):
    policy: str
    workers: int
    hives: int
    rows: list[PreviewRow]


class PolicyReplayRequest(Struct, frozen=True, kw_only=True):
    source: Source
    format: PolicyFormat = "rhai"
    last: Annotated[int, Meta(ge=1, le=10_000)] = 100


class ReplayRow(Struct, frozen=True, kw_only=True):
    """A logged decision (``was``) against the draft's on the same job and snapshot (``now``)."""

    job_id: str
    model: str
    was: str
    now: DecisionSummary
    changed: bool


class PolicyReplay(Struct, frozen=True, kw_only=True):
    replayed: int
    changed: int
    errors: int
    rows: list[ReplayRow]


class PolicySource(Struct, frozen=True, kw_only=True):
    """The running policy: a built-in's name (``source`` None) or a file's text."""

    policy: str
    locked: bool
    path: str | None = None
    source: str | None = None
