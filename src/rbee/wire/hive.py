"""The hive's HTTP API: workers and models on one host.

Workers
    ``GET /v1/workers`` -> `WorkerList`; ``GET /v1/workers/{id}`` -> `rbee.wire.queen.WorkerStatus`;
    ``POST /v1/workers`` takes a `SpawnRequest` and answers 202 with the new worker's
    `WorkerStatus` (state ``loading``), or 201 with state ``ready`` when ``wait`` is true;
    ``DELETE /v1/workers/{id}`` retires it (SIGTERM, the grace period, then SIGKILL) and answers
    `WorkerRetired` once the process is gone; ``GET /v1/workers/{id}/log`` -> `WorkerLog`.
Models
    ``GET /v1/models`` -> `ModelList`; ``DELETE /v1/models/{name}`` -> `ModelRemoved`;
    ``POST /v1/models/pull`` takes a `PullRequest` and streams SSE: one `PullProgress` per file now
    and then (`Importing` steps for a ``.gguf`` source), one `Pulled`, then ``[DONE]`` (or
    ``[ERROR] <message>``).
Status
    ``GET /v1/status`` -> the `rbee.wire.queen.HiveHeartbeat` the hive would send now.

The hive also serves its store read-only for peers under ``/v1/store`` (`rbee.models.http`).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from rbee.wire.queen import WorkerStatus
from rbee.wire.worker import Precision

__all__ = [
    "QUEEN_STORE",
    "FileEntry",
    "Importing",
    "ModelInfo",
    "ModelList",
    "ModelRemoved",
    "Precision",
    "PullEvent",
    "PullProgress",
    "PullRequest",
    "Pulled",
    "ShuttingDown",
    "SpawnRequest",
    "WorkerList",
    "WorkerLog",
    "WorkerRetired",
]


QUEEN_STORE = "queen:"


class SpawnRequest(Struct, frozen=True, kw_only=True):
    """Start a worker for ``model`` on ``device`` (``cpu`` or ``cuda:N``).

    ``slots``, ``threads`` and ``precision`` (the graph it runs) default to the worker's own
    settings (``precision``: fp16 on a GPU, int4 on the CPU); ``wait`` blocks the answer until
    the worker is ready (or failed) instead of answering at once with state ``loading``. A
    ``pinned`` worker stays until it is retired by name: the queen's keep-alive and memory-pressure
    evictions leave it alone.
    """

    model: Annotated[str, Meta(min_length=1, max_length=80)]
    device: Annotated[str, Meta(min_length=1, max_length=32)] = "cpu"
    slots: Annotated[int, Meta(ge=1, le=256)] | None = None
    threads: Annotated[int, Meta(ge=0, le=1024)] | None = None
    precision: Precision | None = None
    wait: bool = False
    pinned: bool = False


class WorkerList(Struct, frozen=True):
    workers: list[WorkerStatus]


class WorkerRetired(Struct, frozen=True, kw_only=True):
    """A retired worker; ``killed`` is true when it ignored SIGTERM for the whole grace period."""

    id: str
    exit_code: int | None
    killed: bool = False


class ShuttingDown(Struct, frozen=True, kw_only=True):
    """The answer to ``POST /v1/shutdown``: hive ``hive`` retires its ``workers``, then exits."""

    hive: str
    pid: int
    workers: int


class WorkerLog(Struct, frozen=True):
    """The last lines a worker wrote (stdout and stderr together) and where the full log is."""

    id: str
    lines: list[str]
    path: str


class FileEntry(Struct, frozen=True):
    """One file of a model: its size in bytes and its hex sha256 (a manifest lists one per file)."""

    size: int
    sha256: str


class ModelInfo(Struct, frozen=True, kw_only=True):
    """One model in a hive's store."""

    name: str
    architecture: str
    context_length: int
    precisions: list[str]
    size_bytes: int
    files: dict[str, FileEntry]
    chat: str = ""
    """Where the chat template comes from: ``gguf``, ``built-in`` or ``none`` (raw prompts)."""
    vram_required_mb: float | None = None
    """The estimated VRAM of a GPU worker with the hive's default slots (`rbee.models.vram`);
    None when the graph cannot be read."""


class ModelList(Struct, frozen=True):
    models: list[ModelInfo]


class ModelRemoved(Struct, frozen=True):
    name: str


class PullRequest(Struct, frozen=True, kw_only=True):
    """Install model ``name`` from ``source``, with the graphs ``precisions``.

    ``source`` is a local model directory (with its ``rbee-model.toml``), a local ``.gguf`` file
    (imported: converted to ONNX on this host), the http(s) URL of a peer's store
    (``http://queen:7833`` or ``http://queen:7833/v1/store``), or `QUEEN_STORE`: the store of the
    queen the hive reports to, at the address the hive reaches it by (the queen cannot know which
    of its addresses a hive can reach). Expected sizes and sha256 come from the source's manifest.

    A ``.gguf`` source builds the graphs ``precisions`` (empty: int4 and fp16); a model source
    sends only their files (a GPU host needs only ``fp16``; empty: every graph it has) and is
    refused if it lacks one.
    """

    name: Annotated[str, Meta(min_length=1, max_length=80)]
    source: Annotated[str, Meta(min_length=1, max_length=4096)]
    precisions: Annotated[list[Precision], Meta(max_length=3)] = []


class PullProgress(Struct, frozen=True, kw_only=True, tag="progress", tag_field="type"):
    """Bytes of ``file`` present so far (``resumed`` of them kept from an earlier attempt)."""

    file: str
    done: int
    total: int
    resumed: int = 0


class Importing(Struct, frozen=True, kw_only=True, tag="import", tag_field="type"):
    """A ``.gguf`` source is being converted: ``step`` of ``steps`` done."""

    file: str
    step: int
    steps: int


class Pulled(Struct, frozen=True, kw_only=True, tag="pulled", tag_field="type"):
    """The model is installed and every file matched its sha256."""

    name: str
    size_bytes: int
    downloaded_bytes: int
    resumed_bytes: int


PullEvent = PullProgress | Importing | Pulled
