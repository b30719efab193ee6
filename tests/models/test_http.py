"""The model store served read-only over HTTP (the Blueprint the hive and the queen mount)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from rbee.models.store import Manifest, ModelStore
from tests.hive.fakes import PeerStore, make_model

SIZE = 300_000


@pytest.fixture
async def peer(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[PeerStore, Manifest]]:
    store = ModelStore(tmp_path / "store")
    manifest = make_model(store.dir("m1"), "m1", {"model.int4.onnx": SIZE, "tokenizer.json": 20})
    peer = PeerStore(store)
    peer.url = await nursery.start(peer.serve)
    yield peer, manifest
    peer.stop.set()


async def test_lists_and_describes_models(peer: tuple[PeerStore, Manifest]) -> None:
    store, manifest = peer
    async with httpx.AsyncClient(base_url=f"{store.url}/v1/store") as client:
        listed = msgspec.json.decode((await client.get("/models")).content, type=list[Manifest])
        assert listed == [manifest]
        one = msgspec.json.decode((await client.get("/models/m1")).content, type=Manifest)
        assert one == manifest
        missing = await client.get("/models/nope")
        assert missing.status_code == 404
        assert "not in the store" in missing.json()["error"]["message"]
        assert (await client.get("/models/Bad..Name")).status_code == 400


async def test_serves_whole_files_and_ranges(peer: tuple[PeerStore, Manifest]) -> None:
    store, manifest = peer
    data = (store.store.dir("m1") / "model.int4.onnx").read_bytes()
    async with httpx.AsyncClient(base_url=f"{store.url}/v1/store/models/m1/files") as client:
        whole = await client.get("/model.int4.onnx")
        assert whole.status_code == 200
        assert whole.content == data
        assert whole.headers["X-Sha256"] == manifest.files["model.int4.onnx"].sha256
        assert whole.headers["Accept-Ranges"] == "bytes"

        part = await client.get("/model.int4.onnx", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes 1000-1999/{SIZE}"
        assert part.content == data[1000:2000]

        tail = await client.get("/model.int4.onnx", headers={"Range": "bytes=299000-"})
        assert (tail.status_code, tail.content) == (206, data[299000:])
        suffix = await client.get("/model.int4.onnx", headers={"Range": "bytes=-10"})
        assert (suffix.status_code, suffix.content) == (206, data[-10:])

        beyond = await client.get("/model.int4.onnx", headers={"Range": f"bytes={SIZE}-"})
        assert beyond.status_code == 416
        assert beyond.headers["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/store/models/m1/files/rbee-model.toml",
        "/v1/store/models/m1/files/..%2F..%2Fetc%2Fpasswd",
        "/v1/store/models/m1/files/.hidden",
        "/v1/store/models/..%2Fm1/files/tokenizer.json",
        "/v1/store/models/m1/files/nope.bin",
    ],
)
async def test_serves_only_files_in_the_manifest(
    peer: tuple[PeerStore, Manifest], path: str
) -> None:
    store, _ = peer
    async with httpx.AsyncClient(base_url=store.url) as client:
        response = await client.get(path)
    assert 400 <= response.status_code < 500
    assert b"root:" not in response.content


async def test_a_corrupted_file_is_refused(peer: tuple[PeerStore, Manifest]) -> None:
    store, _ = peer
    path = store.store.dir("m1") / "model.int4.onnx"
    async with httpx.AsyncClient(base_url=f"{store.url}/v1/store/models/m1/files") as client:
        assert (await client.get("/model.int4.onnx")).status_code == 200
        data = bytearray(path.read_bytes())
        data[5] ^= 0xFF
        path.write_bytes(bytes(data))
        response = await client.get("/model.int4.onnx", headers={"Range": "bytes=0-9"})
        assert response.status_code == 409
        assert "corrupted" in response.json()["error"]["message"]
        path.write_bytes(b"short")
        response = await client.get("/model.int4.onnx")
        assert response.status_code == 409
        assert "manifest says" in response.json()["error"]["message"]
