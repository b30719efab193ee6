"""A model store served read-only over HTTP, so that a host without internet can pull from a peer.

Mounted by the hive and by the queen (``app.register_blueprint(store_blueprint(store))``):

``GET /v1/store/models``
    A JSON list of every complete model's `Manifest`.
``GET /v1/store/models/{name}``
    That model's `Manifest` (404 when it is not there).
``GET /v1/store/models/{name}/files/{file}``
    The file's bytes. A single ``Range: bytes=...`` answers 206 with ``Content-Range`` (how a pull
    resumes); an unsatisfiable one answers 416. Only files listed in the manifest are served, so no
    request reaches outside the model's directory, and a file whose size or sha256 no longer
    matches the manifest is refused (409) instead of being handed to a peer that would install it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path

import trio
from quart import Blueprint, Response, request

from rbee.errors import ApiError, ModelError, NotFoundError
from rbee.models.store import ModelStore, sha256_file, validate_name
from rbee.server import error_response, json_response
from rbee.wire.hive import FileEntry

__all__ = ["store_blueprint"]

_CHUNK = 1 << 20


class _Verified:
    """Which files were hashed and found to match, keyed by what would change if they were edited.

    Hashing a multi-gigabyte graph on every request would be far too slow; hashing it once per
    (inode, size, mtime) catches a file that was corrupted or replaced since it was last served.
    """

    def __init__(self) -> None:
        self._ok: dict[str, tuple[int, int, int, str]] = {}

    async def check(self, model: str, filename: str, path: Path, entry: FileEntry) -> int:
        """The file's size, once it is known to match ``entry``; `ApiError` 409 otherwise."""
        try:
            st = await trio.Path(path).stat()
        except FileNotFoundError:
            raise ApiError(
                f"model {model}: {filename} is missing from the store; re-import or re-pull it", 409
            ) from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns, entry.sha256)
        if self._ok.get(str(path)) == key:
            return st.st_size
        if st.st_size != entry.size:
            raise ApiError(
                f"model {model}: {filename} has {st.st_size} bytes, its manifest says "
                f"{entry.size}; the store copy is damaged, re-import or re-pull it",
                409,
            )
        digest = await trio.to_thread.run_sync(sha256_file, path)
        if digest != entry.sha256:
            raise ApiError(
                f"model {model}: {filename} is corrupted (sha256 does not match its manifest); "
                "the store copy is refused, re-import or re-pull it",
                409,
            )
        self._ok[str(path)] = key
        return st.st_size


async def _file_body(path: Path, start: int, stop: int) -> AsyncGenerator[bytes, None]:
    async with await trio.open_file(path, "rb") as f:
        await f.seek(start)
        left = stop - start
        while left > 0:
            chunk = await f.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def store_blueprint(store: ModelStore) -> Blueprint:
    """Routes that serve ``store`` read-only under ``/v1/store``."""
    bp = Blueprint("model_store", __name__, url_prefix="/v1/store")
    verified = _Verified()

    def manifest_of(name: str) -> tuple[Path, dict[str, FileEntry]]:
        validate_name(name)
        try:
            manifest = store.get(name)
        except ModelError as err:
            raise NotFoundError(str(err)) from None
        return store.dir(name), manifest.files

    @bp.get("/models")
    async def list_models() -> Response:
        return json_response(await trio.to_thread.run_sync(store.list))

    @bp.get("/models/<name>")
    async def get_model(name: str) -> Response:
        validate_name(name)
        try:
            return json_response(store.get(name))
        except ModelError as err:
            raise NotFoundError(str(err)) from None

    @bp.get("/models/<name>/files/<filename>")
    async def get_file(name: str, filename: str) -> Response:
        directory, files = manifest_of(name)
        entry = files.get(filename)
        if entry is None or os.sep in filename or filename.startswith("."):
            raise NotFoundError(f"model {name} has no file {filename!r}")
        path = directory / filename
        size = await verified.check(name, filename, path, entry)
        headers = {"Accept-Ranges": "bytes", "X-Sha256": entry.sha256}
        ranges = request.range
        if ranges is not None and len(ranges.ranges) == 1:
            span = ranges.range_for_length(size)
            if span is None:
                headers["Content-Range"] = f"bytes */{size}"
                return error_response(
                    f"range {request.headers.get('Range')} is outside {filename} ({size} bytes)",
                    416,
                    headers=headers,
                )
            start, stop = span
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            headers["Content-Length"] = str(stop - start)
            body = _file_body(path, start, stop)
            return Response(body, status=206, mimetype="application/octet-stream", headers=headers)
        headers["Content-Length"] = str(size)
        body = _file_body(path, 0, size)
        return Response(body, status=200, mimetype="application/octet-stream", headers=headers)

    return bp
