"""The keeper's client for the queen's cluster routes: hives, their workers and their models.

Everything goes through the queen (`rbee.queen.cluster_api`); the keeper never talks to a hive.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msgspec

from rbee import sse, wire
from rbee.cli import Context
from rbee.client import check, translate_errors
from rbee.errors import ModelError
from rbee.keeper.api import QueenClient
from rbee.wire.hive import ModelInfo, ModelList, ModelRemoved, PullEvent, WorkerRetired
from rbee.wire.queen import (
    HiveEntry,
    HiveList,
    ModelPullRequest,
    WorkerEntry,
    WorkerEntryList,
    WorkerSpawn,
    WorkerStatus,
)

__all__ = ["ClusterClient", "cluster_for"]

_pull_events = msgspec.json.Decoder(PullEvent)

# A spawn that waits for a model to load, a retire that waits out a worker's grace period.
LONG_TIMEOUT_S = 300.0


class ClusterClient(QueenClient):
    """`QueenClient` plus the hive, worker and model routes."""

    def __enter__(self) -> ClusterClient:
        return self

    def hives(self) -> list[HiveEntry]:
        return self._call("GET", "/v1/hives", "listing hives", HiveList).hives

    def workers(self) -> list[WorkerEntry]:
        return self._call("GET", "/v1/workers", "listing workers", WorkerEntryList).workers

    def spawn(self, request: WorkerSpawn) -> WorkerStatus:
        return self._call(
            "POST",
            "/v1/workers",
            f"spawning a worker on hive {request.hive}",
            WorkerStatus,
            content=wire.encode(request),
            headers={"Content-Type": "application/json"},
            timeout=LONG_TIMEOUT_S,
        )

    def retire(self, worker_id: str) -> WorkerRetired:
        return self._call(
            "DELETE",
            f"/v1/workers/{worker_id}",
            f"retiring worker {worker_id}",
            WorkerRetired,
            timeout=LONG_TIMEOUT_S,
        )

    def models(self, hive: str) -> list[ModelInfo]:
        return self._call(
            "GET", f"/v1/hives/{hive}/models", f"listing models on hive {hive}", ModelList
        ).models

    def remove_model(self, hive: str, model: str) -> ModelRemoved:
        return self._call(
            "DELETE",
            f"/v1/hives/{hive}/models/{model}",
            f"removing model {model} from hive {hive}",
            ModelRemoved,
        )

    def pull(self, hive: str, model: str) -> Iterator[PullEvent]:
        """The hive's progress while it pulls ``model`` from the queen's store."""
        what = f"pulling {model} onto hive {hive}"
        body = wire.encode(ModelPullRequest(model=model))
        outcome: str | None = None
        with (
            translate_errors("queen", self.url),
            self._http.stream(
                "POST",
                f"/v1/hives/{hive}/models/pull",
                content=body,
                headers={"Content-Type": "application/json"},
                timeout=httpx.Timeout(self._http.timeout.connect, read=LONG_TIMEOUT_S),
            ) as response,
        ):
            if not response.is_success:
                response.read()
                check(response, what)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].removeprefix(" ")
                if sse.is_terminal(data):
                    outcome = data
                    break
                yield _pull_events.decode(data)
        if outcome == sse.DONE:
            return
        if outcome is None:
            raise ModelError(f"{what}: the queen ended the stream without a result")
        raise ModelError(f"{what}: {outcome.removeprefix(sse.ERROR_PREFIX).strip()}")


def cluster_for(ctx: Context, token: str | None) -> ClusterClient:
    """A cluster client for the queen this command line points at, with its token."""
    keeper = ctx.config.keeper
    return ClusterClient(ctx.queen(), token or keeper.token, keeper.timeout_s)
