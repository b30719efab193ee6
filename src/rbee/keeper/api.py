"""The keeper's client for the queen's HTTP API (synchronous: the CLI does one thing at a time).

Transport failures become `ConnectError` ("cannot reach the queen at URL: is it running?") and
error answers `ApiError` with the queen's message, so every keeper command fails with one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import click
import httpx
import msgspec

from rbee import sse, wire
from rbee.cli import Context
from rbee.client import auth_headers, check, translate_errors
from rbee.errors import InferenceError
from rbee.wire.queen import (
    DecisionList,
    DecisionRecord,
    JobInfo,
    JobList,
    JobRequest,
    QueenStatus,
)
from rbee.wire.worker import Finished, StreamEvent, Token, stream_event_decoder

__all__ = ["QueenClient", "client_for", "token_option"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def token_option(f: F) -> F:
    """``--token``: the queen's API token (default keeper.token)."""
    return click.option("--token", help="API token for the queen (default keeper.token).")(f)


class QueenClient:
    """``POST /v1/jobs``, the job stream, job records and status, over one connection pool."""

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

    def run(self, job: JobRequest) -> Iterator[str | Token | Finished]:
        """Submit ``job`` and follow it in one call: its id, then its tokens, then `Finished`.

        Raises `InferenceError` if the job fails or is cancelled.
        """
        decoder: msgspec.json.Decoder[StreamEvent] = stream_event_decoder()
        with (
            translate_errors("queen", self.url),
            self._http.stream(
                "POST",
                "/v1/jobs",
                content=wire.encode(job),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
                timeout=httpx.Timeout(self._http.timeout.connect, read=None),
            ) as response,
        ):
            if not response.is_success:
                response.read()
                check(response, "submitting the job")
            job_id = response.headers.get(sse.JOB_ID_HEADER, "?")
            yield job_id
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].removeprefix(" ")
                if data == sse.DONE:
                    return
                if data == sse.CANCELLED:
                    raise InferenceError(f"job {job_id} was cancelled")
                if data.startswith(sse.ERROR_PREFIX):
                    message = data.removeprefix(sse.ERROR_PREFIX).strip()
                    raise InferenceError(f"job {job_id} failed: {message}")
                event = decoder.decode(data)
                if isinstance(event, Token | Finished):
                    yield event
        raise InferenceError(f"the queen ended the stream of job {job_id} early")

    def job(self, job_id: str) -> JobInfo:
        return self._call("GET", f"/v1/jobs/{job_id}", f"job {job_id}", JobInfo)

    def jobs(self, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        params: dict[str, str | int] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return self._call("GET", "/v1/jobs", "listing jobs", JobList, params=params).jobs

    def cancel(self, job_id: str) -> JobInfo:
        return self._call("DELETE", f"/v1/jobs/{job_id}", f"cancelling job {job_id}", JobInfo)

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


def client_for(ctx: Context, token: str | None) -> QueenClient:
    """A client for the queen this command line points at, with its token."""
    keeper = ctx.config.keeper
    return QueenClient(ctx.queen(), token or keeper.token, keeper.timeout_s)
