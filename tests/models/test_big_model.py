"""A model of a real small model's size end to end: a random-weight llama GGUF of Llama 3.2 1B's
shape (1.2B parameters; Q4_0 matrices, a Q8_0 token table) imported with ``rbee model import`` in
bounded memory, then served by a worker process that answers over HTTP. The same token table
in Q4_0, also the output projection, is imported in the same bound (one layer: the table is
what a tied 4-bit head makes big)."""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import msgspec
import onnx
import pytest
from gguf import GGMLQuantizationType

from rbee.models.store import ModelStore
from rbee.wire.worker import Finished, StreamEvent, Token
from tests.helpers import RBEE
from tests.models.helpers import LlamaShape, write_llama_shaped_gguf

pytestmark = pytest.mark.slow

SHAPE = LlamaShape(layers=16, hidden=2048, ffn=8192, heads=32, kv_heads=8, vocab=128256)
# The import keeps one matrix (or run of embedding rows) in memory at a time: its peak is a
# fraction of the model, here under a fifth of the 5 GB its weights take as float32.
MAX_IMPORT_RSS_MB = 1000
MAX_TOKENS = 4


def parameters(shape: LlamaShape) -> int:
    kv = shape.kv_heads * shape.hidden // shape.heads
    block = 2 * shape.hidden * shape.hidden + 2 * kv * shape.hidden + 3 * shape.ffn * shape.hidden
    return shape.layers * block + shape.vocab * shape.hidden


def import_with_peak(
    scratch: Path, shape: LlamaShape, embedding: GGMLQuantizationType
) -> tuple[Path, int]:
    """A Q4_0 llama GGUF of ``shape`` (``embedding`` for the token table) imported as ``big``
    (int4 only) by ``rbee model import``: the store and the import's peak RSS in kB."""
    source = write_llama_shaped_gguf(
        scratch / "big.gguf", shape, GGMLQuantizationType.Q4_0, embedding
    )
    store = scratch / "store"
    command = [*RBEE, "model", "import", str(source), "--name", "big", "--precision", "int4"]
    process = subprocess.Popen([*command, "--models-dir", str(store)], stdout=subprocess.DEVNULL)
    # wait4 gives this child's own peak RSS, whatever else the test session ran.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    source.unlink()
    return store, usage.ru_maxrss


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The store holding the big model (int4 only) and the import's peak RSS in kB."""
    return import_with_peak(tmp_path_factory.mktemp("big"), SHAPE, GGMLQuantizationType.Q8_0)


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def worker_url(imported: tuple[Path, int]) -> Iterator[str]:
    command = [*RBEE, "worker", "daemon", "--model", "big", "--models-dir", str(imported[0])]
    command += ["--port", "0", "--slots", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            listening = lines.get(timeout=60)
            assert listening.startswith("rbee worker listening on http://")
            assert lines.get(timeout=180).startswith("rbee worker ready model=big")
            yield listening.rsplit(" ", 1)[1]
        finally:
            process.terminate()
            process.wait(timeout=30)
            reader.join(timeout=5)


def test_import_of_a_1b_model_stays_in_bounded_memory(imported: tuple[Path, int]) -> None:
    store, peak_kb = imported
    manifest = ModelStore(store).get("big")
    assert parameters(SHAPE) > 1.2e9
    assert manifest.precisions == ["int4"]
    # Every matrix stays packed: the graph's data is about the GGUF's 0.8 GB.
    assert 0.5e9 < manifest.size_bytes < 1e9
    print(f"import peak RSS {peak_kb / 1024:.0f} MB")
    assert peak_kb / 1024 < MAX_IMPORT_RSS_MB


def test_import_of_a_tied_q4_0_token_table_stays_in_bounded_memory(tmp_path: Path) -> None:
    shape = dataclasses.replace(SHAPE, layers=1)
    store, peak_kb = import_with_peak(tmp_path, shape, GGMLQuantizationType.Q4_0)
    graph = onnx.load(ModelStore(store).dir("big") / "model.int4.onnx", load_external_data=False)
    dims = {t.name: list(t.dims) for t in graph.graph.initializer}
    shutil.rmtree(store)  # 1.2 GB, mostly the lookup's float table
    # The head keeps the table's 4-bit codes; the lookup reads a float32 table.
    assert dims["output.qweight"] == [shape.vocab, shape.hidden // 32, 16]
    assert dims["token_embd.weight"] == [shape.vocab, shape.hidden]
    print(f"import peak RSS {peak_kb / 1024:.0f} MB")
    assert peak_kb / 1024 < MAX_IMPORT_RSS_MB


def test_a_worker_serves_the_1b_model(worker_url: str) -> None:
    body = {"prompt": "Hello there", "max_tokens": MAX_TOKENS, "temperature": 0}
    events: list[StreamEvent] = []
    with httpx.stream(
        "POST",
        worker_url + "/v1/inference",
        json=body,
        headers={"Accept": "text/event-stream"},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    decoder = msgspec.json.Decoder(StreamEvent)
    events = [decoder.decode(line.removeprefix("data: ")) for line in lines[:-1]]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.usage.completion_tokens == MAX_TOKENS
    assert sum(len(e.ids) for e in events if isinstance(e, Token)) == MAX_TOKENS
