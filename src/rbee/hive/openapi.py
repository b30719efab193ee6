"""The hive's route table, from which `rbee.openapi` makes its ``GET /openapi.json``."""

from __future__ import annotations

from rbee.openapi import COMMON, STORE, STREAM, Route, Routes
from rbee.wire import hive as wh
from rbee.wire.queen import HiveHeartbeat, WorkerStatus

__all__ = ["ROUTES"]

ROUTES: Routes = (
    COMMON
    | STORE
    | {
        ("POST", "/v1/shutdown"): Route(
            "Stop the hive as SIGTERM does: its workers retired, then the daemon",
            wh.ShuttingDown,
            status=202,
        ),
        ("GET", "/v1/status"): Route("What the hive would report to the queen now", HiveHeartbeat),
        ("GET", "/v1/workers"): Route("Every worker of this hive", wh.WorkerList),
        ("POST", "/v1/workers"): Route(
            "Start a worker (201 once ready with wait, else 202)",
            WorkerStatus,
            body=wh.SpawnRequest,
            status=202,
            also=(201,),
        ),
        ("GET", "/v1/workers/{worker_id}"): Route("One worker", WorkerStatus),
        ("GET", "/v1/workers/{worker_id}/log"): Route(
            "The last lines of a worker's log", wh.WorkerLog
        ),
        ("DELETE", "/v1/workers/{worker_id}"): Route(
            "Stop a worker; answers once it is gone", wh.WorkerRetired
        ),
        ("GET", "/v1/models"): Route("The models in the hive's store", wh.ModelList),
        ("DELETE", "/v1/models/{name}"): Route("Remove a model from the store", wh.ModelRemoved),
        ("POST", "/v1/models/pull"): Route(
            f"Install a model from a source (the queen, a peer, a GGUF file): {STREAM}",
            body=wh.PullRequest,
            stream=True,
        ),
    }
)
