"""The model store: one directory per model under ``~/.cache/rbee/models`` (or a configured root).

A model directory holds the ONNX graph(s) with their external data, ``tokenizer.json`` and the
manifest ``rbee-model.toml``, which lists every other file with its size and sha256. The manifest is
written last and directories are filled under a temporary name and renamed into place, so a
directory with a manifest is complete; anything else (a crashed import or pull) is ignored by
`ModelStore.list` and replaced by the next import or pull.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec
import tomli_w

from rbee.errors import ModelError, ModelNotFoundError, UsageError
from rbee.wire.hive import FileEntry

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["MANIFEST", "Manifest", "ModelStore", "sha256_file", "validate_name"]

MANIFEST = "rbee-model.toml"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_CHUNK = 1 << 20


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """What a model directory holds and how to run it."""

    name: str
    architecture: str
    context_length: int
    vocab_size: int
    precisions: list[str]
    chat_template: str = ""
    chat_template_source: str = ""
    """``gguf`` (the file's own), ``built-in`` (the architecture's known one) or ``none``: the
    model takes raw prompts only (empty for models imported before this was recorded)."""
    stop_token_ids: list[int] = []
    bos_token_id: int = -1
    """Prompts start with this token (-1: none)."""
    source: str = ""
    files: dict[str, FileEntry] = {}

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def graph_file(self, precision: str) -> str:
        """The ONNX file for ``precision`` (``model.<precision>.onnx``)."""
        if precision not in self.precisions:
            raise ModelError(
                f"model {self.name} has no {precision} graph (has: {', '.join(self.precisions)}); "
                f"import it with 'rbee model import FILE.gguf --precision {precision}'"
            )
        return f"model.{precision}.onnx"

    def with_precisions(self, precisions: Sequence[str]) -> Manifest:
        """This manifest reduced to the graphs ``precisions`` (all when empty) and the files
        they need; `ModelError` naming the missing ones if it lacks any."""
        if not precisions:
            return self
        missing = [p for p in precisions if p not in self.precisions]
        if missing:
            raise ModelError(
                f"model {self.name} has no {', '.join(missing)} graph "
                f"(has: {', '.join(self.precisions)})"
            )
        dropped = tuple(f"model.{p}.onnx" for p in self.precisions if p not in precisions)
        files = {n: f for n, f in self.files.items() if not n.startswith(dropped)}
        kept = [p for p in self.precisions if p in precisions]
        return msgspec.structs.replace(self, precisions=kept, files=files)


def validate_name(name: str) -> str:
    """A model name is a plain lowercase identifier: never a path, never ``..``."""
    if not _NAME.match(name) or ".." in name:
        raise UsageError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' and '-' "
            "(no '/' or '..', at most 80 characters)"
        )
    return name


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest file; a broken one is a `ModelError` naming the file."""
    try:
        return msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), Manifest)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as err:
        raise ModelError(f"broken model manifest {path}: {err}") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into ``directory`` (last step of an import or pull)."""
    data = msgspec.to_builtins(manifest)
    (directory / MANIFEST).write_text(tomli_w.dumps(data), encoding="utf-8")


def describe_files(directory: Path) -> dict[str, FileEntry]:
    """Size and sha256 of every file in ``directory`` except the manifest."""
    return {
        p.name: FileEntry(size=p.stat().st_size, sha256=sha256_file(p))
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


class ModelStore:
    """The models on this host, one directory each under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, name: str) -> Path:
        """The directory of model ``name`` (which need not exist yet)."""
        return self.root / validate_name(name)

    def has(self, name: str) -> bool:
        return (self.dir(name) / MANIFEST).is_file()

    def get(self, name: str) -> Manifest:
        """The manifest of an installed model, or `ModelNotFoundError` saying how to get it."""
        path = self.dir(name) / MANIFEST
        if not path.is_file():
            raise ModelNotFoundError(
                f"model {name!r} is not in the store at {self.root}; "
                f"import it with 'rbee model import FILE.gguf --name {name}' or pull it to this hive"
            )
        return read_manifest(path)

    def list(self) -> list[Manifest]:
        """Every complete model, by name."""
        if not self.root.is_dir():
            return []
        found = [p / MANIFEST for p in sorted(self.root.iterdir()) if not p.name.startswith(".")]
        return [read_manifest(p) for p in found if p.is_file()]

    def remove(self, name: str) -> None:
        """Delete a model; `ModelError` if it is not there."""
        self.get(name)
        shutil.rmtree(self.dir(name))

    def verify(self, name: str) -> None:
        """Check every file's size and sha256 against the manifest; `ModelError` on a mismatch."""
        manifest = self.get(name)
        directory = self.dir(name)
        for filename, entry in manifest.files.items():
            path = directory / filename
            if not path.is_file() or path.stat().st_size != entry.size:
                raise ModelError(f"model {name}: {filename} is missing or has the wrong size")
            if sha256_file(path) != entry.sha256:
                raise ModelError(f"model {name}: {filename} is corrupted (sha256 mismatch)")

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A scratch directory that becomes model ``name`` when the block succeeds.

        The block fills the directory and writes the manifest last; on an exception the scratch
        directory is removed and any previous version of the model is left untouched.
        """
        final = self.dir(name)
        scratch = self.root / f".staging-{name}"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        try:
            yield scratch
            if not (scratch / MANIFEST).is_file():
                raise ModelError(f"internal error: staging for {name} finished without a manifest")
            old = self.root / f".old-{name}"
            if final.exists():
                final.rename(old)
            scratch.rename(final)
            if old.exists():
                shutil.rmtree(old)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)
