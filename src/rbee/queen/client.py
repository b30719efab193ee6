"""A typed client of the queen's API (`rbee.wire.queen`), for the keeper CLI and scripts.

Synchronous: the keeper does one thing at a time. It covers jobs (``POST /v1/jobs`` and their
stream, records, cancel), API keys, status, the decision log and the cluster routes (hives, their workers and
models), which the queen forwards to the right hive: the keeper never talks to a hive itself.
Transport failures become `ConnectError` ("cannot reach the queen at URL: is it running?"), error
answers `ApiError` / `NotFoundError` with the queen's message, a failed job `InferenceError` and a
failed pull `ModelError`, so every caller fails with one line.

`QueenClient.run` survives a dropped connection: it reconnects to the job's stream with the
``Last-Event-ID`` it last saw, and the queen sends the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec

from rbee import sse, wire
from rbee.client import auth_headers, check, translate_errors
from rbee.errors import ConnectError, InferenceError, ModelError, SshError
from rbee.wire.hive import ModelInfo, ModelList, ModelRemoved, PullEvent, WorkerRetired
from rbee.wire.hosts import (
    HiveAdd,
    HiveLogs,
    HiveStarted,
    HiveStopped,
    HiveTrust,
    HostHive,
    HostKeyInfo,
    PushProgress,
)
from rbee.wire.queen import (
    DecisionList,
    DecisionRecord,
    HiveEntry,
    HiveList,
    JobInfo,
    JobList,
    JobRequest,
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyList,
    ModelPullRequest,
    QueenStatus,
    WorkerEntry,
    WorkerEntryList,
    WorkerSpawn,
    WorkerStatus,
)
from rbee.wire.worker import Finished, Precision, StreamEvent, Token, stream_event_decoder

__all__ = ["LONG_TIMEOUT_S", "RECONNECTS", "QueenClient"]

T = TypeVar("T")

# A spawn that waits for a model to load, a retire that waits out a worker's grace period.
LONG_TIMEOUT_S = 300.0

# A job's stream that drops is followed again this many times in a row, the pause between tries
# doubling up to its cap: about 17 s in all, time for a queen killed outright to be restarted.
RECONNECTS = 10
RECONNECT_PAUSE_S = 0.5
RECONNECT_PAUSE_MAX_S = 2.0

_pull_events = msgspec.json.Decoder(PullEvent)
_deploy_events = msgspec.json.Decoder(PushProgress | HiveStarted)
_log_events = msgspec.json.Decoder(HiveLogs)


class _Dropped(Exception):
    """The connection of a stream that had begun broke."""


def _frames(response: httpx.Response) -> Iterator[tuple[int | None, str]]:
    """An SSE answer's events as (``id`` or None, ``data``); `_Dropped` if the connection breaks."""
    event_id: int | None = None
    try:
        for line in response.iter_lines():
            if line.startswith("id:"):
                value = line[3:].strip()
                event_id = int(value) if value.isdigit() else None
            elif line.startswith("data:"):
                yield event_id, line[5:].removeprefix(" ")
                event_id = None
    except httpx.TransportError as err:
        raise _Dropped(str(err) or type(err).__name__) from None


class QueenClient:
    """The queen at ``url``, over one connection pool; use it as a context manager."""

    def __init__(
        self,
        url: str,
        token: str = "",
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers=auth_headers(token),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> QueenClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._http.close()

    def _call(self, method: str, path: str, what: str, type_: type[T], **kwargs: Any) -> T:
        with translate_errors("queen", self.url):
            response = check(self._http.request(method, path, **kwargs), what)
        return wire.decode(response.content, type_, what="answer from the queen")

    @contextlib.contextmanager
    def _stream(
        self,
        path: str,
        what: str,
        body: bytes | None,
        read_s: float | None,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Iterator[tuple[str, Iterator[tuple[int | None, str]]]]:
        """POST ``body`` to ``path`` (GET without one): the answer's job id header and its SSE
        events (`_frames`)."""
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        with (
            translate_errors("queen", self.url),
            self._http.stream(
                "GET" if body is None else "POST",
                path,
                content=body,
                params=params,
                headers=sent,
                timeout=httpx.Timeout(self._http.timeout.connect, read=read_s),
            ) as response,
        ):
            if not response.is_success:
                response.read()
                check(response, what)
            yield response.headers.get(sse.JOB_ID_HEADER, "?"), _frames(response)

    # --- jobs ----------------------------------------------------------------------------------

    def run(self, job: JobRequest) -> Iterator[str | Token | Finished]:
        """Submit ``job`` and follow it in one call: its id, then its tokens, then `Finished`.

        A stream whose connection drops is followed again from the last event seen, up to
        `RECONNECTS` times in a row. Raises `InferenceError` if the job fails or is cancelled.
        """
        with self._stream("/v1/jobs", "submitting the job", wire.encode(job), None) as (
            job_id,
            frames,
        ):
            yield job_id
            seen = yield from self._follow(job_id, frames, 0)
        failures = 0
        while seen is not None:
            if failures == RECONNECTS:
                raise InferenceError(
                    f"lost the stream of job {job_id} and could not get it back after "
                    f"{RECONNECTS} tries"
                )
            time.sleep(min(RECONNECT_PAUSE_S * 2**failures, RECONNECT_PAUSE_MAX_S))
            failures += 1
            try:
                with self._stream(
                    f"/v1/jobs/{job_id}/stream",
                    f"following job {job_id}",
                    None,
                    None,
                    headers={"Last-Event-ID": str(seen)},
                ) as (_, frames):
                    resumed = yield from self._follow(job_id, frames, seen)
            except ConnectError:
                continue
            if resumed != seen:
                failures = 0
            seen = resumed

    def _follow(
        self, job_id: str, frames: Iterator[tuple[int | None, str]], seen: int
    ) -> Generator[Token | Finished, None, int | None]:
        """Yield the events of one connection to a job's stream; return None at its end, or the
        id of the last event seen if the connection dropped first."""
        decoder: msgspec.json.Decoder[StreamEvent] = stream_event_decoder()
        try:
            for event_id, data in frames:
                seen = event_id if event_id is not None else seen
                if data == sse.DONE:
                    return None
                if data == sse.CANCELLED:
                    raise InferenceError(f"job {job_id} was cancelled")
                if data.startswith(sse.ERROR_PREFIX):
                    message = data.removeprefix(sse.ERROR_PREFIX).strip()
                    raise InferenceError(f"job {job_id} failed: {message}")
                event = decoder.decode(data)
                if isinstance(event, Token | Finished):
                    yield event
        except _Dropped:
            return seen
        return seen

    def job(self, job_id: str) -> JobInfo:
        return self._call("GET", f"/v1/jobs/{job_id}", f"job {job_id}", JobInfo)

    def jobs(self, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        params: dict[str, str | int] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return self._call("GET", "/v1/jobs", "listing jobs", JobList, params=params).jobs

    def cancel(self, job_id: str) -> JobInfo:
        return self._call("DELETE", f"/v1/jobs/{job_id}", f"cancelling job {job_id}", JobInfo)

    # --- API keys (admin) -----------------------------------------------------------------------

    def create_key(self, spec: KeyCreate) -> KeyCreated:
        return self._call(
            "POST",
            "/v1/keys",
            f"creating key {spec.name}",
            KeyCreated,
            content=wire.encode(spec),
            headers={"Content-Type": "application/json"},
        )

    def keys(self) -> list[KeyInfo]:
        return self._call("GET", "/v1/keys", "listing keys", KeyList).keys

    def revoke_key(self, name: str) -> KeyInfo:
        return self._call("DELETE", f"/v1/keys/{name}", f"revoking key {name}", KeyInfo)

    # --- status and the decision log -----------------------------------------------------------

    def status(self) -> QueenStatus:
        return self._call("GET", "/v1/status", "asking the queen's status", QueenStatus)

    def decisions(self, last: int, job_id: str | None = None) -> list[DecisionRecord]:
        """The last ``last`` scheduling decisions (of one job, with ``job_id``), oldest first."""
        params: dict[str, str | int] = {"last": last}
        if job_id is not None:
            params["job_id"] = job_id
        return self._call(
            "GET", "/v1/decisions", "reading the decision log", DecisionList, params=params
        ).decisions

    # --- the cluster: hives, their workers and models ------------------------------------------

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

    def pull(
        self, hive: str, model: str, precisions: Sequence[Precision] = ()
    ) -> Iterator[PullEvent]:
        """The hive's progress while it pulls ``model`` from the queen's store (the graphs
        ``precisions``; empty: all)."""
        what = f"pulling {model} onto hive {hive}"
        body = wire.encode(ModelPullRequest(model=model, precisions=list(precisions)))
        outcome: str | None = None
        path = f"/v1/hives/{hive}/models/pull"
        with self._stream(path, what, body, LONG_TIMEOUT_S) as (_, events):
            try:
                for _, data in events:
                    if sse.is_terminal(data):
                        outcome = data
                        break
                    yield _pull_events.decode(data)
            except _Dropped as err:
                raise ModelError(f"{what}: the connection to the queen broke: {err}") from None
        if outcome == sse.DONE:
            return
        if outcome is None:
            raise ModelError(f"{what}: the queen ended the stream without a result")
        raise ModelError(f"{what}: {outcome.removeprefix(sse.ERROR_PREFIX).strip()}")

    # --- hives on other hosts, which the queen starts over SSH ---------------------------------

    def add_hive(self, request: HiveAdd) -> HostHive:
        return self._call(
            "POST",
            "/v1/hives",
            f"registering hive {request.name}",
            HostHive,
            content=wire.encode(request),
            headers={"Content-Type": "application/json"},
        )

    def host_hive(self, name: str) -> HostHive:
        return self._call("GET", f"/v1/hives/{name}", f"reading hive {name}", HostHive)

    def trust(self, name: str, fingerprint: str = "") -> HostKeyInfo:
        """The host key hive ``name``'s host offers; trusted if ``fingerprint`` is its own."""
        return self._call(
            "POST",
            f"/v1/hives/{name}/trust",
            f"checking the host key of hive {name}",
            HostKeyInfo,
            content=wire.encode(HiveTrust(fingerprint=fingerprint)),
            headers={"Content-Type": "application/json"},
            timeout=LONG_TIMEOUT_S,
        )

    def start_hive(
        self, name: str, *, upgrade: bool = False
    ) -> Iterator[PushProgress | HiveStarted]:
        """The copy's progress while the queen starts (or upgrades) hive ``name``, then the
        outcome; `SshError` with the queen's message when it fails.
        """
        verb = "upgrade" if upgrade else "start"
        what = f"{'upgrading' if upgrade else 'starting'} hive {name}"
        outcome: str | None = None
        with self._stream(f"/v1/hives/{name}/{verb}", what, b"", LONG_TIMEOUT_S) as (_, events):
            for _, data in events:
                if sse.is_terminal(data):
                    outcome = data
                    break
                yield _deploy_events.decode(data)
        if outcome == sse.DONE:
            return
        if outcome is None:
            raise SshError(f"{what}: the queen ended the stream without a result")
        raise SshError(outcome.removeprefix(sse.ERROR_PREFIX).strip())

    def stop_hive(self, name: str) -> HiveStopped:
        return self._call(
            "POST",
            f"/v1/hives/{name}/stop",
            f"stopping hive {name}",
            HiveStopped,
            timeout=LONG_TIMEOUT_S,
        )

    def remove_hive(self, name: str) -> HiveStopped:
        return self._call(
            "DELETE",
            f"/v1/hives/{name}",
            f"removing hive {name}",
            HiveStopped,
            timeout=LONG_TIMEOUT_S,
        )

    def hive_logs(self, name: str, lines: int) -> list[str]:
        params = {"lines": str(lines)}
        what = f"reading the log of hive {name}"
        return self._call("GET", f"/v1/hives/{name}/logs", what, HiveLogs, params=params).lines

    def follow_hive_logs(self, name: str, lines: int) -> Iterator[list[str]]:
        """The last ``lines`` lines of the hive's log, then each batch it writes, until closed."""
        params = {"lines": str(lines), "follow": "1"}
        what = f"following the log of hive {name}"
        with self._stream(f"/v1/hives/{name}/logs", what, None, None, params=params) as (
            _,
            events,
        ):
            for _, data in events:
                if sse.is_terminal(data):
                    if data.startswith(sse.ERROR_PREFIX):
                        raise SshError(data.removeprefix(sse.ERROR_PREFIX).strip())
                    return
                yield _log_events.decode(data).lines
