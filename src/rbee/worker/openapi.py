"""The worker's route table, from which `rbee.openapi` makes its ``GET /openapi.json``."""

from __future__ import annotations

from rbee.openapi import COMMON, STREAM, Route, Routes
from rbee.wire import worker as ww

__all__ = ["ROUTES"]

ROUTES: Routes = COMMON | {
    ("GET", "/v1/info"): Route("The model served and the slots free", ww.WorkerInfo),
    ("POST", "/v1/inference"): Route(
        "Start a generation (its stream at once with Accept: text/event-stream)",
        ww.InferenceAccepted,
        body=ww.InferenceRequest,
        status=202,
        stream=True,
    ),
    ("GET", "/v1/inference/{job_id}/stream"): Route(
        f"A generation's stream, read once: {STREAM}", stream=True
    ),
    ("DELETE", "/v1/inference/{job_id}"): Route(
        "Cancel a generation; answers once its slot is free", status=204
    ),
}
