"""The zipapp: built by build/build.py, answering under every supported CPython.

``rbee.pyz`` (the session fixture ``pyz``, built once) carries the packages of CPython 3.10 to 3.13;
each test that runs it does so under each of those interpreters found on this machine (pyenv's, or
on ``PATH``) and is skipped, saying which, for one that is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from rbee import __version__, pythons
from rbee.models.importer import DEFAULT_MODEL
from tests.test_bootstrap import load_bootstrap, unpacked_build

ROOT = Path(__file__).resolve().parent.parent
PYENV = Path("/root/.pyenv/versions")
# Where each interpreter is looked for when ``python3.X`` is not on PATH.
PYENV_PYTHONS = {
    "3.9": PYENV / "3.9.18/bin/python3.9",
    "3.10": PYENV / "3.10.13/bin/python3.10",
    "3.12": PYENV / "3.12.1/bin/python3.12",
    "3.13": PYENV / "3.13.0/bin/python3.13",
}
SUPPORTED = [f"{major}.{minor}" for major, minor in pythons.SUPPORTED]
# The command line that starts a worker daemon, after the interpreter and the archive.
WORKER_DAEMON = ("worker", "daemon")
FIRST_START_S = 300  # unpacking and compiling one interpreter's packages on a busy machine
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}

pytestmark = pytest.mark.slow


def interpreter(version: str) -> str:
    """A working ``python<version>``, or a skip that names the one missing."""
    candidates = [PYENV_PYTHONS.get(version), shutil.which(f"python{version}")]
    for candidate in filter(None, candidates):
        probe = subprocess.run([str(candidate), "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return str(candidate)
    pytest.skip(f"no Python {version} on this machine (looked for {PYENV_PYTHONS.get(version)})")


@pytest.fixture(scope="session")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archives' unpack directory for this session, so that every run starts empty."""
    return tmp_path_factory.mktemp("pyz-root")


def run(
    python: str, pyz: Path, *args: str, root: Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RBEE_PYZ_ROOT": str(root)}
    return subprocess.run(
        [python, str(pyz), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        check=False,
        timeout=FIRST_START_S,
    )


@pytest.mark.parametrize("version", SUPPORTED)
def test_pyz_answers_version_and_help_under_each_python(
    version: str, pyz: Path, unpacked: Path, tmp_path: Path
) -> None:
    python = interpreter(version)
    answered = run(python, pyz, "--version", root=unpacked, cwd=tmp_path)
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip() == f"rbee {__version__}"
    helped = run(python, pyz, "--help", root=unpacked, cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "policy" in helped.stdout


@pytest.mark.parametrize("version", SUPPORTED)
def test_policy_check_runs_under_each_python(version: str, pyz: Path, unpacked: Path) -> None:
    example = ROOT / "policies" / "least_loaded.rhai"
    checked = run(interpreter(version), pyz, "policy", "check", str(example), root=unpacked)
    assert checked.returncode == 0, checked.stderr
    rules = ROOT / "policies" / "rules.yaml"
    compiled = run(interpreter(version), pyz, "policy", "compile", str(rules), root=unpacked)
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout.startswith("// Compiled from rules.yaml by rbee")
    bad = run(interpreter(version), pyz, "policy", "check", str(ROOT / "README.md"), root=unpacked)
    assert bad.returncode == 1
    assert bad.stderr.startswith("rbee: error:"), bad.stderr


@pytest.mark.parametrize("version", SUPPORTED)
def test_a_worker_from_the_pyz_answers_a_prompt_under_each_python(
    version: str, pyz: Path, unpacked: Path, model_store: Path
) -> None:
    command = [interpreter(version), str(pyz), *WORKER_DAEMON, "--model", DEFAULT_MODEL]
    command += ["--models-dir", str(model_store), "--port", "0", "--slots", "1"]
    env = {**os.environ, "RBEE_PYZ_ROOT": str(unpacked)}
    with started(command, env) as url:
        text = ask(url, "What is the capital of France? Answer in one word.")
    assert "Paris" in text


def test_a_start_removes_an_unpacked_build_unused_for_a_week(pyz: Path, unpacked: Path) -> None:
    stale = unpacked_build(unpacked, "0123456789abcdef-cp311", started_days_ago=8)
    answered = run(interpreter("3.11"), pyz, "--version", root=unpacked)
    assert answered.returncode == 0, answered.stderr
    assert not stale.exists()
    (own,) = [p for p in unpacked.glob(".*-cp311.use") if p.name != f".{stale.name}.use"]
    assert time.time() - own.stat().st_mtime < 600
    assert (unpacked / own.name[1:].removesuffix(".use")).is_dir()


def test_python_39_gets_one_line_and_unpacks_nothing(pyz: Path, tmp_path: Path) -> None:
    python = interpreter("3.9")
    refused = run(python, pyz, "--version", root=tmp_path / "root")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("rbee: error: rbee needs CPython 3.10, 3.11, 3.12 or 3.13;")
    assert "Python 3.9." in refused.stderr
    assert not (tmp_path / "root").exists()


def test_pyz_shebang_asks_for_any_python3(pyz: Path) -> None:
    first_line = pyz.read_bytes().split(b"\n", 1)[0]
    assert first_line == b"#!/usr/bin/env python3"


def test_pyz_copied_alone_runs_as_a_program(pyz: Path, unpacked: Path, tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere" / "rbee.pyz"
    alone.parent.mkdir()
    shutil.copy2(pyz, alone)
    env = {**os.environ, "RBEE_PYZ_ROOT": str(unpacked)}
    # As the README runs it: './rbee.pyz' (the zip importer then knows it as '/dir/./rbee.pyz').
    for program in (str(alone), "./rbee.pyz"):
        answered = subprocess.run(
            [program, "--version"],
            capture_output=True,
            text=True,
            env=env,
            cwd=alone.parent,
            check=False,
            timeout=300,
        )
        assert answered.returncode == 0, (program, answered.stderr)
        assert answered.stdout.strip() == f"rbee {__version__}"


@contextlib.contextmanager
def opened(pyz: Path) -> Iterator[tuple[zipfile.ZipFile, zipfile.ZipFile]]:
    """``pyz`` and the payload archive inside it, as the bootstrap reads them."""
    boot = load_bootstrap()
    with pyz.open("rb") as file, zipfile.ZipFile(file) as outer, boot.payload(outer, file) as inner:
        yield outer, inner


def test_the_archive_holds_a_handful_of_entries_and_the_payload_the_rest(pyz: Path) -> None:
    """The zip importer reads the outer directory at every start: it stays small."""
    with opened(pyz) as (outer, inner):
        names = outer.namelist()
        assert names[:3] == ["__main__.py", "_rbee_boot.py", "_rbee_pythons.py"]
        assert len(names) < 10
        assert outer.getinfo("rbee-pyz/payload.zip").compress_type == zipfile.ZIP_STORED
        assert len(inner.namelist()) > 1000
        assert inner.testzip() is None


def test_pyz_stores_each_content_once_for_every_python(pyz: Path) -> None:
    with opened(pyz) as (zf, inner):
        info = json.loads(zf.read("rbee-pyz/build.json"))
        listings = {abi: json.loads(zf.read(f"rbee-pyz/{abi}.json")) for abi in info["abis"]}
        stored = inner.namelist()
        contents = [hashlib.sha256(inner.read(name)).digest() for name in stored]
    assert info["abis"] == [f"cp{major}{minor}" for major, minor in pythons.SUPPORTED]
    assert len(set(contents)) == len(contents)
    # Pure Python is stored once: every interpreter reads rbee from the same entry.
    assert {listing["rbee/pythons.py"] for listing in listings.values()} == {
        "site-packages/rbee/pythons.py"
    }
    for abi, listing in listings.items():
        assert f"onnxruntime/capi/onnxruntime_pybind11_state.{tag(abi, 'x86_64')}.so" in listing
    assert sum(map(len, listings.values())) > 2 * len(stored)


def test_pyz_carries_the_web_page(pyz: Path) -> None:
    """Every file of the queen's page ships in the archive, byte for byte."""
    web = ROOT / "src" / "rbee" / "queen" / "web"
    with opened(pyz) as (_, inner):
        for path in web.iterdir():
            assert inner.read(f"site-packages/rbee/queen/web/{path.name}") == path.read_bytes()


def tag(abi: str, arch: str) -> str:
    return f"cpython-{abi[2:]}-{arch}-linux-gnu"


def test_the_aarch64_pyz_carries_arm_libraries_for_every_python(tmp_path: Path) -> None:
    """Built for aarch64 it cannot run here: its contents are checked, and here it refuses."""
    arm = tmp_path / "rbee-aarch64.pyz"
    build(
        [
            sys.executable,
            str(ROOT / "build" / "build.py"),
            "--arch",
            "aarch64",
            "--output",
            str(arm),
        ]
    )
    with opened(arm) as (zf, inner):
        info = json.loads(zf.read("rbee-pyz/build.json"))
        assert info["machine"] == "aarch64"
        for abi in info["abis"]:
            listing = json.loads(zf.read(f"rbee-pyz/{abi}.json"))
            for module in (
                f"onnxruntime/capi/onnxruntime_pybind11_state.{tag(abi, 'aarch64')}.so",
                f"numpy/_core/_multiarray_umath.{tag(abi, 'aarch64')}.so",
            ):
                header = inner.read(listing[module])[:20]
                assert header[:4] == b"\x7fELF"
                assert int.from_bytes(header[18:20], "little") == ELF_MACHINES["aarch64"]
    refused = run(sys.executable, arm, "--version", root=tmp_path / "root")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "rbee: error: rbee-aarch64.pyz is built for aarch64 Linux; this is x86_64 linux "
        "(build.py --arch builds for another machine)"
    )


def test_the_full_pyz_alone_answers_with_the_default_model(tmp_path: Path) -> None:
    """``rbee-full.pyz`` carries the default model: copied alone, it imports and serves it.

    Built for this interpreter only: the other interpreters are the universal file's tests.
    """
    full = tmp_path / "elsewhere" / "rbee-full.pyz"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    build_py = [sys.executable, str(ROOT / "build" / "build.py"), "--flavour", "full"]
    build([*build_py, "--python", version, "--output", str(full)])
    # A home of its own: the unpacked archive and the model store start empty.
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("XDG_CACHE_HOME", None)
    command = [sys.executable, str(full), *WORKER_DAEMON, "--model", DEFAULT_MODEL]
    with started([*command, "--port", "0", "--slots", "1"], env, cwd=full.parent) as url:
        text = ask(url, "What is the capital of France? Answer in one word.")
    assert "Paris" in text
    assert (tmp_path / "home" / ".cache" / "rbee" / "models" / DEFAULT_MODEL).is_dir()
    assert (tmp_path / "home" / ".cache" / "rbee" / "pyz").is_dir()


def build(command: list[str]) -> None:
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr


def _lines(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], cwd: Path | None = None) -> Iterator[str]:
    """A worker daemon from ``command``, ready; its URL. Stopped (SIGTERM, exit 0) afterwards."""
    worker = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_lines, args=(worker.stdout, lines), daemon=True)
    reader.start()
    try:
        listening = lines.get(timeout=FIRST_START_S)
        assert listening.startswith("rbee worker listening on http://127.0.0.1:"), listening
        assert lines.get(timeout=FIRST_START_S).startswith("rbee worker ready")
        yield listening.rsplit(" ", 1)[1]
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
        reader.join(timeout=5)
        worker.stdout.close()


def ask(url: str, question: str) -> str:
    """The worker's greedy answer to ``question``, at most 8 tokens, read from its stream."""
    body = {"messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 8}
    headers = {"Accept": "text/event-stream"}
    with httpx.stream("POST", f"{url}/v1/inference", json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    return "".join(event["t"] for event in events if event["type"] == "token")
