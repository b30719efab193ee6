"""The one error tree of rbee, and how each error answers over HTTP.

Foreign errors (httpx, asyncssh, onnxruntime, sqlite, tomllib) are converted where they enter rbee,
so that everything above that boundary only sees these. A daemon answers each with the status,
OpenAI-style ``type`` and ``code`` drawn beside it (the class attributes `RbeeError.status`,
``error_type`` and ``code``; `rbee.server.error_parts` reads them and nothing else)::

    RbeeError                 500 server_error        anything rbee reports to a user as one line
    ├── UsageError            400 invalid_request     the command line or a request was malformed
    │                                                 (CLI exit code 2; ``param`` names the field)
    ├── ConfigError           500 server_error        the config file cannot be read or has a bad
    │                                                 key/value (the daemon's, not the client's)
    ├── ApiError              its own status          a peer answered with an error (its status is
    │   │                                             passed on), or a refusal with a chosen status
    │   ├── NotFoundError     404 invalid_request     the thing asked for does not exist
    │   │   └── NoWorkerError 404 invalid_request     no worker serves the model, none can start
    │   ├── AuthError         401 authentication_error no key, or an unknown, revoked or expired
    │   │                                             one (code invalid_api_key)
    │   ├── ForbiddenError    403 permission_error    the caller may not do this (code
    │   │                                             model_not_allowed, admin_only, wrong_hive)
    │   ├── QueueFullError    429 rate_limit_exceeded every slot busy, queue full (code queue_full,
    │   │                                             ``Retry-After``)
    │   └── QuotaError        429 rate_limit_exceeded a key's requests, tokens or streams per
    │                                                 minute are used up (``Retry-After`` and the
    │                                                 ``x-ratelimit-*`` headers)
    ├── ConnectError          502 server_error        a peer could not be reached (queen, hive or
    │                                                 worker down)
    ├── ModelError            422 invalid_request     a model cannot be imported or loaded (a bad
    │   │                                             file, a missing precision or chat template)
    │   └── ModelNotFoundError 404 invalid_request    no worker, hive or store has the model (code
    │                                                 model_not_found)
    ├── InferenceError        500 server_error        generation failed in the engine
    ├── PolicyError           500 server_error        a scheduling policy failed to parse, compile
    │                                                 or run (the operator's file, not the request)
    └── SshError              502 server_error        an SSH connection, command or transfer failed

``invalid_request`` stands for ``invalid_request_error``. A body that is not UTF-8 JSON of the
route's wire type is a `UsageError` (`rbee.wire.decode`); one over the size limit is answered 413
``body_too_large`` before any route runs (`rbee.server.BodyLimit`). A `ModelError` is a 422: the request
was well formed, the model cannot serve it. A hive's or worker's missing or wrong token is
answered by `rbee.server.create_app` before any route runs, the queen's callers by
`rbee.queen.auth`; both answer as `AuthError` does. Every error's message says what went wrong and, where it can, what to do
about it.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "ForbiddenError",
    "InferenceError",
    "ModelError",
    "ModelNotFoundError",
    "NoWorkerError",
    "NotFoundError",
    "PolicyError",
    "QueueFullError",
    "QuotaError",
    "RbeeError",
    "SshError",
    "UsageError",
]


class RbeeError(Exception):
    """Base of every error rbee reports; ``str(err)`` is the one line a user sees.

    ``status``, ``error_type``, ``code`` and ``param`` are how a daemon answers with it (the
    body's ``error.type``, ``error.code`` and ``error.param``); ``retry_after`` (seconds), when
    set, goes out as ``Retry-After``, and ``headers`` go out as they are.
    """

    exit_code = 1
    status = 500
    error_type = "server_error"
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None
    headers: dict[str, str] | None = None


class UsageError(RbeeError):
    """A command line or request body was malformed; ``param`` names the field, when known,
    and ``code`` says what was wrong when OpenAI has a name for it (``context_length_exceeded``).
    """

    exit_code = 2
    status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ConfigError(RbeeError):
    """The config file is malformed or holds an unknown key or a bad value."""


class ApiError(RbeeError):
    """An HTTP API answered, or answers, with an error status.

    ``error_type`` and ``code`` fill the error body's ``type`` and ``code`` (OpenAI's shape).
    """

    def __init__(
        self,
        message: str,
        status: int = 500,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = code


class NotFoundError(ApiError):
    """The job, worker, hive or model asked for does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class NoWorkerError(NotFoundError):
    """No worker serves the model and none can be started for it (the policy rejected the job,
    or the queen has no way to start workers)."""


class QueueFullError(ApiError):
    """Every slot is busy and the wait queue is full: retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, 429, error_type="rate_limit_exceeded", code="queue_full")
        self.retry_after = retry_after


class AuthError(ApiError):
    """The caller sent no credential the queen accepts: no key, or an unknown, revoked or
    expired one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 401, error_type="authentication_error", code="invalid_api_key")
        # Refused before its body was read: a connection kept alive after that could hang the
        # next request on it (seen with hypercorn), so it closes and the next opens another.
        self.headers = {"Connection": "close"}


class ForbiddenError(ApiError):
    """The caller's key is valid but may not do this (``code`` says what: a model it may not
    use, a route only the cluster's admin may call)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, 403, error_type="permission_error", code=code)
        self.headers = {"Connection": "close"}


class QuotaError(ApiError):
    """A key used up its requests, tokens or concurrent streams: retry after ``retry_after`` s.

    ``headers`` carry the ``x-ratelimit-*`` figures of the key's limits.
    """

    def __init__(self, message: str, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(message, 429, error_type="rate_limit_exceeded", code="rate_limit_exceeded")
        self.retry_after = retry_after
        self.headers = headers


class ConnectError(RbeeError):
    """A queen, hive or worker could not be reached."""

    status = 502


class ModelError(RbeeError):
    """A model file is invalid or unsupported, or the model cannot serve what was asked."""

    status = 422
    error_type = "invalid_request_error"


class ModelNotFoundError(ModelError):
    """No worker serves the model, no hive has it and no store it could come from has it."""

    status = 404
    code = "model_not_found"


class InferenceError(RbeeError):
    """Generation was refused or failed."""


class PolicyError(RbeeError):
    """A scheduling policy failed to parse, compile or evaluate.

    ``line`` and ``column`` are 1-based positions in ``filename`` when known.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str = "<policy>",
        line: int | None = None,
        column: int | None = None,
        source_line: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(self._render())

    def _render(self) -> str:
        if self.line is None:
            return f"{self.filename}: {self.message}"
        where = f"{self.filename}:{self.line}:{self.column or 1}: {self.message}"
        if self.source_line is None:
            return where
        caret = " " * max((self.column or 1) - 1, 0) + "^"
        return f"{where}\n    {self.source_line}\n    {caret}"


class SshError(RbeeError):
    """An SSH connection, remote command or file transfer failed."""

    status = 502
