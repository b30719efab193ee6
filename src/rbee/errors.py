"""The one error tree of rbee.

Foreign errors (httpx, asyncssh, onnxruntime, sqlite, tomllib) are converted where they enter rbee,
so that everything above that boundary only sees these::

    RbeeError                   anything rbee reports to a user as one line
    ├── UsageError              the command line or a request was malformed (CLI exit code 2)
    ├── ConfigError             the config file cannot be read or has a bad key/value
    ├── ApiError                a peer answered with an error (carries the HTTP status)
    │   └── NotFoundError       the thing asked for does not exist (404)
    ├── ConnectError            a peer could not be reached (queen, hive or worker down)
    ├── ModelError              a model cannot be imported, found or loaded
    ├── InferenceError          generation failed or was refused (context too long, ...)
    ├── PolicyError             a scheduling policy failed to parse, compile or run
    └── SshError                an SSH connection, command or transfer failed

Every error's message says what went wrong and, where it can, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "ConfigError",
    "ConnectError",
    "InferenceError",
    "ModelError",
    "NotFoundError",
    "PolicyError",
    "RbeeError",
    "SshError",
    "UsageError",
]


class RbeeError(Exception):
    """Base of every error rbee reports; ``str(err)`` is the one line a user sees."""

    exit_code = 1


class UsageError(RbeeError):
    """A command line or request body was malformed."""

    exit_code = 2


class ConfigError(RbeeError):
    """The config file is malformed or holds an unknown key or a bad value."""


class ApiError(RbeeError):
    """An HTTP API answered, or answers, with an error status.

    ``error_type`` and ``code`` fill the error body's ``type`` and ``code`` (OpenAI's shape);
    ``headers`` go out with the answer (``Retry-After`` on a 429).
    """

    def __init__(
        self,
        message: str,
        status: int = 500,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.code = code
        self.headers = headers or {}


class NotFoundError(ApiError):
    """The job, worker, hive or model asked for does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class ConnectError(RbeeError):
    """A queen, hive or worker could not be reached."""


class ModelError(RbeeError):
    """A model file is invalid or unsupported, or the model is not in the store."""


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
