"""The zipapp: built by build/build.py, answering on its own in another directory."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from rbee import __version__
from rbee.models.importer import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(pyz: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(pyz), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )


def test_pyz_copied_alone_answers_version_and_help(pyz: Path, tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere" / "rbee.pyz"
    alone.parent.mkdir()
    shutil.copy2(pyz, alone)
    version = run(alone, "--version", cwd=alone.parent)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"rbee {__version__}"
    helped = run(alone, "--help", cwd=alone.parent)
    assert helped.returncode == 0, helped.stderr
    assert "config" in helped.stdout


def test_pyz_shebang_pins_python_311(pyz: Path) -> None:
    first_line = pyz.read_bytes().split(b"\n", 1)[0]
    assert first_line == b"#!/usr/bin/env python3.11"


def _other_python() -> str | None:
    """A working interpreter other than 3.11 (pyenv shims may name one that is not enabled)."""
    candidates = [shutil.which(f"python3.{minor}") for minor in (12, 13, 10)]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[02]*/bin/python3")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def test_pyz_refuses_another_python_with_a_clear_message(pyz: Path, tmp_path: Path) -> None:
    other = _other_python()
    if other is None:
        pytest.skip("no Python other than 3.11 on this machine to try the version check with")
    result = subprocess.run(
        [other, str(pyz), "--version"], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 1
    assert "needs Python 3.11" in result.stderr


def test_the_full_pyz_alone_answers_with_the_default_model(tmp_path: Path) -> None:
    """``rbee-full.pyz`` carries the default model: copied alone, it imports and serves it."""
    full = tmp_path / "elsewhere" / "rbee-full.pyz"
    build = [sys.executable, str(ROOT / "build" / "build.py"), "--flavour", "full"]
    subprocess.run([*build, "--output", str(full)], check=True, capture_output=True)
    # A home of its own: shiv's extraction and the model store (its default place) start empty.
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"}
    env["HOME"] = str(tmp_path / "home")
    command = [str(full), "worker", "daemon", "--model", DEFAULT_MODEL, "--port", "0"]
    command += ["--slots", "1"]
    with subprocess.Popen(
        command, cwd=full.parent, env=env, stdout=subprocess.PIPE, text=True
    ) as worker:
        try:
            assert worker.stdout is not None
            url = worker.stdout.readline().split()[-1]
            assert url.startswith("http://127.0.0.1:"), url
            assert worker.stdout.readline().startswith("rbee worker ready")
            question = "What is the capital of France? Answer in one word."
            body = {"messages": [{"role": "user", "content": question}], "temperature": 0}
            headers = {"Accept": "text/event-stream"}
            with httpx.stream(
                "POST", f"{url}/v1/inference", json={**body, "max_tokens": 8}, headers=headers
            ) as r:
                text = "".join(
                    json.loads(line[6:])["t"] for line in r.iter_lines() if '"token"' in line
                )
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert "Paris" in text
    assert (tmp_path / "home" / ".cache" / "rbee" / "models" / DEFAULT_MODEL).is_dir()
