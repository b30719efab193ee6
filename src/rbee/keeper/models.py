"""``rbee model ...``: the models on this machine's store.

``rbee model import FILE.gguf`` converts a GGUF file into the local store (no queen needed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rbee.cli import Context, pass_context

__all__ = ["model"]

_BAR = 30


@click.group()
def model() -> None:
    """Import, list, pull and remove models."""


class _ProgressBar:
    """Percent on stderr: a redrawn bar on a terminal, a line every quarter otherwise."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._tty = sys.stderr.isatty()
        self._shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if self._tty:
            filled = _BAR * done // max(total, 1)
            bar = "#" * filled + " " * (_BAR - filled)
            click.echo(f"\r{self._label} [{bar}] {percent:3d}%", err=True, nl=done >= total)
        elif percent // 25 > self._shown // 25 or done >= total:
            click.echo(f"{self._label}: {percent}%", err=True)
        self._shown = percent


@model.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Name in the store (default: from the file name).")
@click.option(
    "--precision",
    type=click.Choice(["int4", "fp32", "all"]),
    default="all",
    show_default=True,
    help="Graphs to build: int4 keeps the GGUF's 4-bit weights, fp32 is the exact reference.",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The model store (default: worker.models_dir, else ~/.cache/rbee/models).",
)
@pass_context
def import_(
    ctx: Context, file: Path, name: str | None, precision: str, models_dir: Path | None
) -> None:
    """Convert a llama-architecture GGUF FILE into this machine's model store."""
    from rbee.models.importer import PRECISIONS, import_gguf, name_from_path
    from rbee.models.store import ModelStore

    root = models_dir or ctx.config.models_dir(ctx.config.worker.models_dir)
    store = ModelStore(root)
    label = f"importing {name or name_from_path(file)}"
    precisions = PRECISIONS if precision == "all" else (precision,)
    manifest = import_gguf(
        store, file, name=name, precisions=precisions, progress=_ProgressBar(label)
    )
    size_mb = manifest.size_bytes / 1e6
    click.echo(
        f"imported {manifest.name} ({', '.join(manifest.precisions)}, {size_mb:.0f} MB) "
        f"into {store.dir(manifest.name)}"
    )
