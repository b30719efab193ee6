"""`HiveClient` against a running hive: the calls the queen makes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from rbee.errors import ApiError, ConnectError, ModelError, NotFoundError
from rbee.hive.client import HiveClient
from rbee.models.store import ModelStore
from rbee.wire.hive import Pulled, SpawnRequest
from tests.hive.conftest import MODEL, Hive
from tests.hive.fakes import make_model


async def test_spawn_list_retire_and_models(hive: Hive, tmp_path: Path) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        client = HiveClient(hive.state.url, http)
        worker = await client.spawn(SpawnRequest(model=MODEL, wait=True))
        assert worker.state == "ready"
        assert [w.id for w in await client.workers()] == [worker.id]
        assert (await client.status()).workers[0].id == worker.id
        retired = await client.retire(worker.id)
        assert (retired.id, retired.exit_code) == (worker.id, 0)
        with pytest.raises(NotFoundError, match="no worker"):
            await client.retire(worker.id)
        with pytest.raises(ApiError, match=r"invalid device.*HTTP 400"):
            await client.spawn(SpawnRequest(model=MODEL, device="tpu"))

        make_model(tmp_path / "src" / "m2", "m2", {"a.onnx": 2000})
        async with contextlib.aclosing(client.pull("m2", str(tmp_path / "src" / "m2"))) as events:
            last = [e async for e in events][-1]
        assert isinstance(last, Pulled)
        assert sorted(m.name for m in await client.models()) == ["m2", MODEL]
        assert (await client.remove_model("m2")).name == "m2"
        assert not ModelStore(hive.store_root).has("m2")


async def drain(client: HiveClient, name: str, source: Path) -> None:
    async with contextlib.aclosing(client.pull(name, str(source))) as events:
        async for _ in events:
            pass


async def test_failures_are_rbee_errors(hive: Hive, tmp_path: Path) -> None:
    directory = tmp_path / "src" / "bad"
    make_model(directory, "bad", {"a.onnx": 10})
    (directory / "a.onnx").write_bytes(b"0123456789")
    async with httpx.AsyncClient(timeout=30) as http:
        client = HiveClient(hive.state.url, http)
        with pytest.raises(ModelError, match=r"a\.onnx is corrupted"):
            await drain(client, "bad", directory)
        with pytest.raises(ApiError, match="invalid model name"):
            await drain(client, "../x", directory)
        with pytest.raises(ConnectError, match="cannot reach the hive"):
            await HiveClient("http://127.0.0.1:9", http).workers()
