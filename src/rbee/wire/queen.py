"""The queen's HTTP API: heartbeats from hives, the jobs API, status, and the policy views.

``POST /v1/heartbeat`` takes a `HiveHeartbeat` every interval (default 1 s); the queen rebuilds its
in-memory worker registry from them. ``POST /v1/workers/{id}/exited`` (`WorkerExited`) reports a
crash at once instead of at the next heartbeat.

``POST /v1/jobs`` takes a `JobRequest` (tagged by ``"operation"``) and answers `JobAccepted`, or
with ``Accept: text/event-stream`` the job's stream itself (job id in ``Rbee-Job-Id``);
``GET /v1/jobs/{id}/stream`` relays the worker's stream (`rbee.wire.worker.StreamEvent` payloads,
then ``[DONE]``, ``[ERROR] <message>`` or ``[CANCELLED]``); ``GET /v1/jobs/{id}`` is a `JobInfo`,
``GET /v1/jobs?state=`` a `JobList`, ``DELETE /v1/jobs/{id}`` cancels. ``GET /v1/status`` is a
`QueenStatus`, ``GET /v1/decisions?last=N`` a `DecisionList`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from rbee.wire import NAME_PATTERN
from rbee.wire.worker import (
    ChatMessage,
    InferenceRequest,
    Precision,
    SamplingParams,
    sampling_fields,
)

__all__ = [
    "AttemptRecord",
    "DecisionKind",
    "DecisionList",
    "DecisionRecord",
    "GpuTelemetry",
    "HiveEntry",
    "HiveHeartbeat",
    "HiveList",
    "HiveView",
    "HostTelemetry",
    "InferOperation",
    "JobAccepted",
    "JobInfo",
    "JobList",
    "JobRequest",
    "JobState",
    "JobView",
    "KeyCreate",
    "KeyCreated",
    "KeyInfo",
    "KeyList",
    "ModelPullRequest",
    "PolicyStatus",
    "Priority",
    "QueenStatus",
    "RecentError",
    "Snapshot",
    "TenantView",
    "WorkerEntry",
    "WorkerEntryList",
    "WorkerExited",
    "WorkerLoad",
    "WorkerSpawn",
    "WorkerState",
    "WorkerStatus",
    "WorkerView",
]

WorkerState = Literal["loading", "ready", "busy", "stopping"]
# What a scheduling decision was (see `rbee.decisions`).
DecisionKind = Literal["route", "spawn", "queue", "reject"]

Name = Annotated[str, Meta(pattern=NAME_PATTERN)]


class GpuTelemetry(Struct, frozen=True, kw_only=True):
    """One GPU as NVML reports it."""

    index: int
    name: str
    util_pct: float
    vram_total_mb: int
    vram_used_mb: int
    power_w: float | None = None
    temperature_c: float | None = None


class HostTelemetry(Struct, frozen=True, kw_only=True):
    """The machine a hive runs on; ``gpus`` is empty where there is no NVIDIA driver."""

    cpu_count: int
    load_1m: float
    ram_total_mb: int
    ram_free_mb: int
    gpus: list[GpuTelemetry] = []


class WorkerLoad(Struct, frozen=True, kw_only=True):
    """A worker and how loaded it is: the fields its hive reports and a policy sees alike.

    `WorkerStatus` (the hive's report) and `WorkerView` (the policy's view, with the hive's context
    and the queen's count of free slots) extend it.
    """

    id: str
    model: str
    device: str
    state: WorkerState
    slots_total: int
    slots_free: int
    cpu_pct: float = 0.0
    rss_mb: float = 0.0
    gpu_util_pct: float = 0.0
    vram_mb: float = 0.0
    uptime_s: float = 0.0
    provider: str = ""
    """The ONNX Runtime execution provider the worker's model runs on (``CUDAExecutionProvider``,
    ``CPUExecutionProvider``), as its ready line said; empty while it loads."""


class WorkerStatus(WorkerLoad, frozen=True, kw_only=True):
    """One worker as its hive reports it: the process and where it serves.

    ``pinned``: started by hand, and kept until retired by name (see `SpawnRequest`).
    """

    pid: int
    url: str
    pinned: bool = False


class HiveHeartbeat(Struct, frozen=True, kw_only=True):
    """Everything the queen knows about a host, resent every interval.

    ``model_vram_mb``: the estimated VRAM of a GPU worker for each model in the store that has
    one (`rbee.models.vram`), for the policies' placement on GPUs.

    ``contexts``: the context length in tokens of each model in ``models`` (the queen refuses a
    request that cannot fit before a worker sees it).
    """

    hive: Name
    url: str
    host: HostTelemetry
    workers: list[WorkerStatus] = []
    models: list[str] = []
    model_vram_mb: dict[str, float] = {}
    contexts: dict[str, int] = {}
    labels: dict[str, str] = {}
    interval_s: float = 1.0


class WorkerExited(Struct, frozen=True, kw_only=True):
    """A worker process ended without being asked to."""

    hive: Name
    worker_id: str
    model: str
    exit_code: int | None
    log_tail: list[str] = []


class JobView(Struct, frozen=True, kw_only=True):
    """What a scheduling policy may know about a job."""

    id: str
    model: str
    priority: Literal["interactive", "batch"] = "interactive"
    prompt_tokens: int = 0
    max_tokens: int = 256
    tenant: str = ""
    labels: dict[str, str] = {}


class WorkerView(WorkerLoad, frozen=True, kw_only=True):
    """One worker as a policy sees it, in its hive's context.

    ``slots_free`` also counts the queen's own jobs on it; ``hive``, ``labels`` and
    ``total_vram_mb`` (the VRAM of the worker's GPU) come from its hive.
    """

    hive: str
    total_vram_mb: float = 0.0
    labels: dict[str, str] = {}

    @property
    def vram_free_mb(self) -> float:
        return max(self.total_vram_mb - self.vram_mb, 0.0)


class HiveView(Struct, frozen=True, kw_only=True):
    """One online hive, where workers could be spawned.

    ``model_vram_mb`` is its estimate of a GPU worker's VRAM for each model it has (see
    `HiveHeartbeat`).
    """

    name: str
    labels: dict[str, str] = {}
    gpus: tuple[GpuTelemetry, ...] = ()
    ram_free_mb: float = 0.0
    models: tuple[str, ...] = ()
    model_vram_mb: dict[str, float] = {}
    workers: int = 0

    @property
    def vram_free_mb(self) -> float:
        return float(sum(g.vram_total_mb - g.vram_used_mb for g in self.gpus))


class TenantView(Struct, frozen=True, kw_only=True):
    """One tenant's use of its keys' quotas in the current minute, as a policy sees it.

    Sums over the tenant's keys; a limit of 0 is no limit (a tenant with one unlimited key has
    none). ``concurrent`` counts its jobs admitted and not yet ended.
    """

    name: str
    requests: int = 0
    tokens: int = 0
    concurrent: int = 0
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0


class Snapshot(Struct, frozen=True, kw_only=True):
    """The cluster at one instant, as a policy sees it (``tenants``: those with a key)."""

    workers: tuple[WorkerView, ...] = ()
    hives: tuple[HiveView, ...] = ()
    tenants: tuple[TenantView, ...] = ()


class DecisionRecord(Struct, frozen=True, kw_only=True):
    """One logged scheduling decision: enough to explain it and to replay it with another policy.

    ``kind`` is route, spawn, queue or reject; ``target`` the worker (route) or hive (spawn);
    ``error`` the policy error that made the queen use its fallback, if any.
    """

    job_id: str
    at: float
    policy: str
    job: JobView
    snapshot: Snapshot
    kind: DecisionKind
    target: str | None = None
    reasons: list[str] = []
    error: str | None = None


# --- The jobs API (``POST /v1/jobs`` and friends) and the queen's own status ---------------------

JobState = Literal["queued", "running", "completed", "failed", "cancelled"]
Priority = Literal["interactive", "batch"]


class InferOperation(SamplingParams, frozen=True, kw_only=True, tag="infer", tag_field="operation"):
    """``{"operation": "infer", ...}``: generate text with ``model``.

    Exactly one of ``prompt`` (raw text) or ``messages`` (chat). ``deadline_s`` bounds how long the
    job may wait for a slot; a job still queued then fails with a deadline error. ``labels`` are
    free-form tags a scheduling policy can route on (``job.labels["team"]``).
    """

    model: Annotated[str, Meta(min_length=1, max_length=200)]
    prompt: Annotated[str, Meta(max_length=1_000_000)] | None = None
    messages: Annotated[list[ChatMessage], Meta(min_length=1)] | None = None
    priority: Priority = "interactive"
    deadline_s: Annotated[float, Meta(gt=0)] | None = None
    labels: Annotated[
        dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=256)]],
        Meta(max_length=32),
    ] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")

    def to_worker(self) -> InferenceRequest:
        """The body the queen posts to the worker it picked."""
        return InferenceRequest(
            model=self.model,
            prompt=self.prompt,
            messages=self.messages,
            **sampling_fields(self),
        )


# Tagged by "operation"; more operations join this union as the queen learns them.
JobRequest = InferOperation


class JobAccepted(Struct, frozen=True):
    """Where to follow a job that was just admitted."""

    job_id: str
    sse_url: str


class AttemptRecord(Struct, frozen=True, kw_only=True):
    """One try of a job on one worker; ``error`` is why it was given up, if it was."""

    n: int
    worker: str
    started_at: float
    ended_at: float | None = None
    error: str | None = None


class JobInfo(Struct, frozen=True, kw_only=True):
    """One job as the queen records it (``GET /v1/jobs/{id}``). Times are Unix seconds."""

    id: str
    operation: str
    model: str
    priority: Priority
    state: JobState
    created_at: float
    tenant: str = ""
    worker: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_ms: float | None = None
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    decision: DecisionRecord | None = None
    attempt_log: list[AttemptRecord] = []


class JobList(Struct, frozen=True):
    jobs: list[JobInfo]


class DecisionList(Struct, frozen=True):
    """The last decisions, oldest first (``GET /v1/decisions?last=N``)."""

    decisions: list[DecisionRecord]


class WorkerEntry(Struct, frozen=True, kw_only=True):
    """A worker in the queen's registry: its hive's report plus what the queen adds.

    ``stalled``: it stopped answering in the middle of a stream and gets no jobs until it answers
    again.
    """

    hive: str
    worker: WorkerStatus
    inflight: int
    last_seen_s: float
    stalled: bool = False


class HiveEntry(Struct, frozen=True, kw_only=True):
    """A hive as its last heartbeat described it.

    ``draining``: it is being upgraded or stopped; no new job goes to it until the new hive
    reports (or ever, once stopped).
    """

    name: str
    url: str
    status: Literal["online", "offline"]
    host: HostTelemetry
    models: list[str] = []
    labels: dict[str, str] = {}
    last_seen_s: float = 0.0
    draining: bool = False


class RecentError(Struct, frozen=True, kw_only=True):
    at: float
    what: str
    message: str


class PolicyStatus(Struct, frozen=True, kw_only=True):
    """The queen's policy file: which, loaded when, reloaded how often, the last reload's error."""

    path: str
    policy: str
    locked: bool
    loaded_at: float
    reloads: int
    reload_error: str | None


class QueenStatus(Struct, frozen=True, kw_only=True):
    """``GET /v1/status``: what ``rbee status`` shows (``policy_file``: none for a built-in)."""

    version: str
    policy: str
    draining: bool
    queue_depth: int
    running: int
    workers: list[WorkerEntry] = []
    hives: list[HiveEntry] = []
    recent_errors: list[RecentError] = []
    last_policy_error: str | None = None
    policy_file: PolicyStatus | None = None


# --- The cluster routes: hives, their workers and models, through the queen ----------------------
# ``GET /v1/hives`` -> `HiveList`; ``GET /v1/workers`` -> `WorkerEntryList`; ``POST /v1/workers``
# takes a `WorkerSpawn` and answers the hive's `WorkerStatus`; ``DELETE /v1/workers/{id}`` answers
# the hive's `rbee.wire.hive.WorkerRetired`. ``GET /v1/hives/{name}/models`` is the hive's
# `rbee.wire.hive.ModelList`, ``DELETE /v1/hives/{name}/models/{model}`` its `ModelRemoved`, and
# ``POST /v1/hives/{name}/models/pull`` (`ModelPullRequest`) relays the hive's pull stream
# (`rbee.wire.hive.PullEvent` payloads, then ``[DONE]`` or ``[ERROR] <message>``) of a model from
# the queen's own store.


class HiveList(Struct, frozen=True):
    hives: list[HiveEntry]


class WorkerEntryList(Struct, frozen=True):
    workers: list[WorkerEntry]


class WorkerSpawn(Struct, frozen=True, kw_only=True):
    """Start a worker for ``model`` on hive ``hive``; ``wait`` answers once it is ready.

    A ``pinned`` worker (the default for a worker started by hand) is never retired for being
    idle or to free memory, only by name. ``precision``: the graph it runs (default: the
    hive's setting, else fp16 on a GPU and int4 on the CPU).
    """

    hive: Name
    model: Annotated[str, Meta(min_length=1, max_length=80)]
    device: Annotated[str, Meta(min_length=1, max_length=32)] = "cpu"
    precision: Precision | None = None
    wait: bool = False
    pinned: bool = True


class ModelPullRequest(Struct, frozen=True, kw_only=True):
    """Install ``model`` from the queen's store on the hive named in the path, with the graphs
    ``precisions`` only (empty: every graph the store has; a GPU host needs only ``fp16``)."""

    model: Annotated[str, Meta(min_length=1, max_length=80)]
    precisions: Annotated[list[Precision], Meta(max_length=3)] = []


# --- API keys: ``POST /v1/keys`` (`KeyCreate` -> `KeyCreated`), ``GET /v1/keys`` (`KeyList`),
# ``DELETE /v1/keys/{name}`` (the revoked `KeyInfo`). Admin only (see `rbee.queen.auth`).


class KeyCreate(Struct, frozen=True, kw_only=True):
    """A new API key: its quotas (0: none), the models it may use (empty: any), its expiry.

    ``tenant`` defaults to the key's name; ``expires_at`` is Unix seconds.
    """

    name: Name
    tenant: Name | None = None
    rpm: Annotated[int, Meta(ge=0)] = 0
    tpm: Annotated[int, Meta(ge=0)] = 0
    concurrent: Annotated[int, Meta(ge=0)] = 0
    models: list[Annotated[str, Meta(min_length=1, max_length=80)]] = []
    expires_at: float | None = None


class KeyInfo(Struct, frozen=True, kw_only=True):
    """A key as ``rbee key list`` shows it: never the key itself, which only its creator saw."""

    name: str
    tenant: str
    rpm: int
    tpm: int
    concurrent: int
    models: list[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class KeyCreated(Struct, frozen=True, kw_only=True):
    """The answer to `KeyCreate`: the full key, shown this once (the queen keeps its SHA-256)."""

    key: str
    info: KeyInfo


class KeyList(Struct, frozen=True):
    keys: list[KeyInfo]
