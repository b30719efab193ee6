"""The queen's routes for hives it starts over SSH: registration, host keys, lifecycle.

- ``POST /v1/hives`` takes a `HiveAdd`, answers the `HostHive`; ``GET /v1/hives/{name}`` is one.
- ``POST /v1/hives/{name}/trust`` takes a `HiveTrust`, answers the `HostKeyInfo` offered
  (recorded only when the request's fingerprint is that key's).
- ``POST /v1/hives/{name}/start`` and ``.../upgrade`` answer a `HiveStarted`; sent with
  ``Accept: text/event-stream``, the answer is a stream of `PushProgress` events while the file
  is copied, then the `HiveStarted`, then ``[DONE]`` (or ``[ERROR] <message>``).
- ``POST /v1/hives/{name}/stop`` and ``DELETE /v1/hives/{name}`` answer a `HiveStopped`.
- ``GET /v1/hives/{name}/logs?lines=N`` is a `HiveLogs`; with ``&follow=1`` a stream of them, as
  the hive writes its log.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from rbee.wire.queen import Name

__all__ = [
    "HiveAdd",
    "HiveLogs",
    "HiveStarted",
    "HiveStopped",
    "HiveTrust",
    "HostHive",
    "HostKeyInfo",
    "PushProgress",
]

_Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-/]+$")]


class HiveAdd(Struct, frozen=True, kw_only=True):
    """Register hive ``name`` on the host ``ssh`` (``USER@HOST[:PORT]`` or an ssh alias).

    ``tunnel``: all traffic between the queen and the hive rides the queen's SSH connection (a
    host that lets only SSH in, or cannot reach the queen).
    """

    name: Name
    ssh: Annotated[str, Meta(min_length=1, max_length=300)]
    identity: Annotated[str, Meta(max_length=4096)] = ""
    python: Annotated[str, Meta(max_length=4096)] = ""
    labels: dict[_Label, Annotated[str, Meta(max_length=256)]] = {}
    tunnel: bool = False


class HiveTrust(Struct, frozen=True, kw_only=True):
    """Trust the host key the hive's host offers if its fingerprint is ``fingerprint``.

    Empty: only show the key offered.
    """

    fingerprint: Annotated[str, Meta(max_length=100)] = ""


class HostKeyInfo(Struct, frozen=True, kw_only=True):
    hive: str
    host: str
    port: int
    fingerprint: str
    key: str
    trusted: bool


class HostHive(Struct, frozen=True, kw_only=True):
    """A hive the queen starts over SSH, as registered, and whether it reports."""

    name: str
    ssh: str
    identity: str = ""
    python: str = ""
    labels: dict[str, str] = {}
    auto_start: bool = False
    tunnel: bool = False
    status: Literal["online", "offline"] = "offline"
    url: str = ""


class PushProgress(Struct, frozen=True, kw_only=True, tag="progress", tag_field="type"):
    """How much of the file has reached the host."""

    copied: int
    total: int


class HiveStarted(Struct, frozen=True, kw_only=True, tag="started", tag_field="type"):
    """What ``hive start`` did: ``changed`` false when the hive already ran this file."""

    name: str
    changed: bool
    pushed: bool
    file: str
    python: str
    pid: int
    seconds: float
    message: str


class HiveStopped(Struct, frozen=True, kw_only=True):
    name: str
    was_running: bool
    message: str


class HiveLogs(Struct, frozen=True, kw_only=True):
    name: str
    lines: list[str]
