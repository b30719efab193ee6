"""The hive's model API: list, remove, and pulls from a peer's store or a local directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from rbee import sse
from rbee.models.store import ModelStore, write_manifest
from rbee.wire.hive import QUEEN_STORE, Importing, ModelList, Pulled, PullEvent, PullProgress
from tests.hive.conftest import MODEL, Hive
from tests.hive.fakes import PeerStore, make_model
from tests.models.helpers import write_tiny_gguf

BIG = 3_000_000
SIZES = {"model.int4.onnx": BIG, "model.int4.onnx.data": 2_000_000, "tokenizer.json": 1000}
_events = msgspec.json.Decoder(PullEvent)


@pytest.fixture
async def peer(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[PeerStore]:
    store = ModelStore(tmp_path / "peer")
    make_model(store.dir("m1"), "m1", SIZES)
    peer = PeerStore(store)
    peer.url = await nursery.start(peer.serve)
    yield peer
    peer.stop.set()


async def pull(
    hive: Hive, name: str, source: str, precisions: Sequence[str] = (), read_s: float = 10.0
) -> tuple[list[PullEvent], str]:
    """POST /v1/models/pull; the events and the terminal marker (``read_s``: the longest wait for data)."""
    events: list[PullEvent] = []
    body = {"name": name, "source": source, "precisions": list(precisions)}
    response = await hive.client.post("/v1/models/pull", json=body, timeout=read_s)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/event-stream"
    for line in response.text.splitlines():
        data = line.removeprefix("data: ")
        if not line.startswith("data: "):
            continue
        if sse.is_terminal(data):
            return events, data
        events.append(_events.decode(data))
    raise AssertionError("the stream ended without a terminal marker")


def outside_files(tmp_path: Path, hive: Hive) -> set[Path]:
    """Every file under tmp_path that is not in the hive's store, the peer's store or the state."""
    keep = (hive.store_root, tmp_path / "peer", tmp_path / "state", tmp_path / "src")
    return {
        p for p in tmp_path.rglob("*") if p.is_file() and not any(p.is_relative_to(k) for k in keep)
    }


async def installed(hive: Hive) -> list[str]:
    listed = msgspec.json.decode((await hive.client.get("/v1/models")).content, type=ModelList)
    return [m.name for m in listed.models]


async def test_pull_from_a_peer_store(hive: Hive, peer: PeerStore) -> None:
    events, end = await pull(hive, "m1", peer.url)
    assert end == sse.DONE
    pulled = events[-1]
    assert isinstance(pulled, Pulled)
    assert pulled.size_bytes == sum(SIZES.values())
    assert (pulled.downloaded_bytes, pulled.resumed_bytes) == (sum(SIZES.values()), 0)
    finals = {e.file: e for e in events if isinstance(e, PullProgress) and e.done == e.total}
    assert set(finals) == set(SIZES)
    assert peer.recorder is not None
    assert peer.recorder.ranges == ["", "", ""]

    store = ModelStore(hive.store_root)
    store.verify("m1")
    assert store.get("m1").source == f"{peer.url}/v1/store/models/m1"
    assert not (hive.store_root / ".partial-m1").exists()
    listed = msgspec.json.decode((await hive.client.get("/v1/models")).content, type=ModelList)
    [info] = [m for m in listed.models if m.name == "m1"]
    assert info.files == peer.store.get("m1").files
    assert info.size_bytes == sum(SIZES.values())
    assert info.precisions == ["int4"]


async def test_a_pull_of_some_precisions_fetches_only_their_graphs(
    hive: Hive, peer: PeerStore
) -> None:
    both = {**SIZES, "model.fp16.onnx": 1000, "model.fp16.onnx.data": 5000}
    make_model(peer.store.dir("m2"), "m2", both, precisions=["int4", "fp16"])
    events, end = await pull(hive, "m2", peer.url, ["fp16"])
    assert end == sse.DONE
    assert {e.file for e in events if isinstance(e, PullProgress)} == {
        "model.fp16.onnx",
        "model.fp16.onnx.data",
        "tokenizer.json",
    }
    store = ModelStore(hive.store_root)
    store.verify("m2")
    assert store.get("m2").precisions == ["fp16"]
    assert sorted(p.name for p in store.dir("m2").iterdir()) == [
        "model.fp16.onnx",
        "model.fp16.onnx.data",
        "rbee-model.toml",
        "tokenizer.json",
    ]
    body: dict[str, Any] = {"name": "m1", "source": peer.url, "precisions": ["fp32"]}
    response = await hive.client.post("/v1/models/pull", json=body)
    assert response.status_code == 422
    assert "has no fp32 graph (has: int4)" in response.json()["error"]["message"]
    body["precisions"] = ["int8"]
    response = await hive.client.post("/v1/models/pull", json=body)
    assert response.status_code == 400
    assert "precisions" in response.json()["error"]["message"]


async def test_the_queen_source_is_the_store_of_the_queen_the_hive_reports_to(
    hive: Hive, peer: PeerStore
) -> None:
    # The hive reaches its queen at the address it heartbeats to, whatever the queen is bound to.
    hive.state.queen_url = peer.url
    events, end = await pull(hive, "m1", QUEEN_STORE)
    assert end == sse.DONE
    assert isinstance(events[-1], Pulled)
    assert ModelStore(hive.store_root).get("m1").source == f"{peer.url}/v1/store/models/m1"
    hive.state.queen_url = ""
    response = await hive.client.post("/v1/models/pull", json={"name": "m2", "source": "queen:"})
    assert response.status_code == 400
    assert "reports to no queen" in response.json()["error"]["message"]


async def test_an_interrupted_pull_resumes_with_a_range(hive: Hive, peer: PeerStore) -> None:
    assert peer.recorder is not None
    peer.recorder.drop_after = 1_200_000
    events, end = await pull(hive, "m1", f"{peer.url}/v1/store")
    assert end.startswith(sse.ERROR_PREFIX)
    assert "m1" not in await installed(hive)
    partial = hive.store_root / ".partial-m1" / "model.int4.onnx"
    have = partial.stat().st_size
    assert 0 < have <= 1_200_000

    events, end = await pull(hive, "m1", f"{peer.url}/v1/store")
    assert end == sse.DONE
    assert f"bytes={have}-" in peer.recorder.ranges
    pulled = events[-1]
    assert isinstance(pulled, Pulled)
    assert pulled.resumed_bytes == have
    assert pulled.downloaded_bytes == sum(SIZES.values()) - have
    ModelStore(hive.store_root).verify("m1")
    assert not (hive.store_root / ".partial-m1").exists()


async def test_a_corrupted_partial_download_is_refused_and_deleted(
    hive: Hive, peer: PeerStore
) -> None:
    assert peer.recorder is not None
    peer.recorder.drop_after = 1_500_000
    _, end = await pull(hive, "m1", peer.url)
    assert end.startswith(sse.ERROR_PREFIX)
    partial = hive.store_root / ".partial-m1" / "model.int4.onnx"
    data = bytearray(partial.read_bytes())
    data[100] ^= 0xFF
    partial.write_bytes(bytes(data))

    _, end = await pull(hive, "m1", peer.url)
    assert end.startswith(sse.ERROR_PREFIX)
    assert "model.int4.onnx is corrupted" in end
    assert not partial.exists()
    assert "m1" not in await installed(hive)
    assert not (hive.store_root / "m1").exists()

    _, end = await pull(hive, "m1", peer.url)
    assert end == sse.DONE
    ModelStore(hive.store_root).verify("m1")


async def test_a_corrupted_source_file_is_not_installed(
    hive: Hive, peer: PeerStore, tmp_path: Path
) -> None:
    path = peer.store.dir("m1") / "model.int4.onnx.data"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    _, end = await pull(hive, "m1", peer.url)
    assert end.startswith(sse.ERROR_PREFIX)
    assert "corrupted" in end
    assert "m1" not in await installed(hive)
    assert not (hive.store_root / "m1").exists()
    assert outside_files(tmp_path, hive) == set()


async def test_pull_from_a_local_directory_and_remove(hive: Hive, tmp_path: Path) -> None:
    make_model(tmp_path / "src" / "exported", "whatever", {"a.onnx": 5000, "tokenizer.json": 10})
    events, end = await pull(hive, "local1", str(tmp_path / "src" / "exported"))
    assert end == sse.DONE
    assert isinstance(events[-1], Pulled)
    store = ModelStore(hive.store_root)
    store.verify("local1")
    assert store.get("local1").name == "local1"

    assert (await hive.client.delete("/v1/models/local1")).status_code == 200
    assert not store.has("local1")
    assert (await hive.client.delete("/v1/models/local1")).status_code == 404


async def test_a_wrong_sha256_in_the_source_manifest_fails_the_pull(
    hive: Hive, tmp_path: Path
) -> None:
    directory = tmp_path / "src" / "bad"
    manifest = make_model(directory, "bad", {"a.onnx": 5000})
    wrong = {"a.onnx": msgspec.structs.replace(manifest.files["a.onnx"], sha256="0" * 64)}
    write_manifest(directory, msgspec.structs.replace(manifest, files=wrong))
    _, end = await pull(hive, "bad", str(directory))
    assert end.startswith(sse.ERROR_PREFIX)
    assert "a.onnx is corrupted" in end
    assert "nothing was installed" in end
    assert not ModelStore(hive.store_root).has("bad")


async def test_a_manifest_naming_files_outside_is_refused(hive: Hive, tmp_path: Path) -> None:
    directory = tmp_path / "src" / "evil"
    manifest = make_model(directory, "evil", {"a.onnx": 10})
    evil = {"../../escaped": manifest.files["a.onnx"]}
    write_manifest(directory, msgspec.structs.replace(manifest, files=evil))
    _, end = await pull(hive, "evil", str(directory))
    assert end.startswith(sse.ERROR_PREFIX)
    assert "invalid file name" in end
    assert outside_files(tmp_path, hive) == set()
    assert not (tmp_path / "escaped").exists()


async def test_removing_a_model_in_use_is_refused(hive: Hive) -> None:
    response = await hive.client.post("/v1/workers", json={"model": MODEL, "wait": True})
    assert response.status_code == 201
    response = await hive.client.delete(f"/v1/models/{MODEL}")
    assert response.status_code == 409
    assert "retire them first" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("name", "source", "status", "words"),
    [
        ("../evil", "PEER", 400, "invalid model name"),
        ("a/b", "PEER", 400, "invalid model name"),
        ("m1", "/nonexistent/dir", 400, "does not exist"),
        ("m1", "ftp://example.invalid/x", 400, "unsupported model source"),
        ("nope", "PEER", 404, "has no model 'nope'"),
        ("m1", "http://127.0.0.1:9", 502, "cannot reach the model source"),
        ("m1", "TMP", 400, "without a rbee-model.toml"),
    ],
)
async def test_pull_refuses_bad_input(
    hive: Hive,
    peer: PeerStore,
    tmp_path: Path,
    name: str,
    source: str,
    status: int,
    words: str,
) -> None:
    source = source.replace("PEER", peer.url).replace("TMP", str(tmp_path / "state"))
    response = await hive.client.post("/v1/models/pull", json={"name": name, "source": source})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert outside_files(tmp_path, hive) == set()
    assert sorted(p.name for p in hive.store_root.iterdir()) == [MODEL]


@pytest.mark.parametrize("path", ["/v1/models/..%2Fstore", "/v1/models/Bad..", "/v1/models/a%2Fb"])
async def test_delete_refuses_bad_names(hive: Hive, path: str) -> None:
    response = await hive.client.delete(path)
    assert 400 <= response.status_code < 500
    assert ModelStore(hive.store_root).has(MODEL)


async def test_a_gguf_without_a_tokenizer_is_a_422_before_any_stream(
    hive: Hive, tmp_path: Path
) -> None:
    (tmp_path / "src").mkdir()
    bare = write_tiny_gguf(tmp_path / "src" / "bare.gguf")
    body = {"name": "bare", "source": str(bare)}
    # Twice: the refused import leaves the name free.
    for _ in range(2):
        response = await hive.client.post("/v1/models/pull", json=body, timeout=30)
        assert response.status_code == 422, response.text
        message = response.json()["error"]["message"]
        assert message.startswith(f"{bare}: no tokenizer in the GGUF metadata"), message
        assert "tokenizer.ggml.tokens" in message
    assert sorted(p.name for p in hive.store_root.iterdir()) == [MODEL]


@pytest.mark.slow
async def test_pull_from_a_gguf_file_imports_it(hive: Hive) -> None:
    from rbee.models.importer import default_model_path

    # Reading the GGUF's metadata and vocabulary comes before the first step (5-10 s when
    # the machine is busy).
    events, end = await pull(hive, "smol-imported", str(default_model_path()), ["fp16"], 60.0)
    assert end == sse.DONE, end
    steps = [e for e in events if isinstance(e, Importing)]
    assert steps
    assert steps[-1].step == steps[-1].steps
    assert isinstance(events[-1], Pulled)
    ModelStore(hive.store_root).verify("smol-imported")
    assert ModelStore(hive.store_root).get("smol-imported").precisions == ["fp16"]
    assert "smol-imported" in await installed(hive)
