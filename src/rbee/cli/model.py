"""``rbee model ...``: the models on this machine's store and on the queen's hives.

``rbee model import FILE.gguf`` converts a GGUF file into the local store (no queen needed);
``list``, ``pull`` and ``rm`` act on the hives through the queen (`rbee.queen.client`).
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from rbee.cli.common import Context, Group, json_option, pass_context, queen_options
from rbee.cli.output import ProgressBar

__all__ = ["model"]


@click.group(cls=Group)
def model() -> None:
    """Import, list, pull and remove models."""


@model.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", help="Name in the store (default: from the file name).")
@click.option(
    "--precision",
    "precision",
    type=click.Choice(["int4", "fp16", "fp32", "all"]),
    multiple=True,
    help="A graph to build (repeat for more; default: int4 and fp16): int4 keeps the GGUF's "
    "quantized weights (the CPU's default), fp16 keeps them too with half-precision activations "
    "(the GPU's default), fp32 is the exact reference (4-8 times the file's size).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The model store (default: worker.models_dir, else ~/.cache/rbee/models).",
)
@pass_context
def import_(
    ctx: Context, file: Path, name: str | None, precision: tuple[str, ...], models_dir: Path | None
) -> None:
    """Convert a GGUF FILE (llama, qwen2, qwen3, gemma3 or phi3) into this machine's model store."""
    from rbee.models.importer import DEFAULT_PRECISIONS, PRECISIONS, import_gguf, name_from_path
    from rbee.models.store import ModelStore

    root = models_dir or ctx.config.models_dir(ctx.config.worker.models_dir)
    store = ModelStore(root)
    label = f"importing {name or name_from_path(file)}"
    if "all" in precision:
        precisions: tuple[str, ...] = PRECISIONS
    else:
        precisions = tuple(p for p in PRECISIONS if p in precision) or DEFAULT_PRECISIONS
    manifest = import_gguf(
        store, file, name=name, precisions=precisions, progress=ProgressBar(label)
    )
    size_mb = manifest.size_bytes / 1e6
    click.echo(
        f"imported {manifest.name} ({', '.join(manifest.precisions)}, {size_mb:.0f} MB) "
        f"into {store.dir(manifest.name)}"
    )


@model.command("list")
@click.option("--hive", help="Only this hive (default: every online hive).")
@json_option
@queen_options
@pass_context
def list_(ctx: Context, hive: str | None, as_json: bool) -> None:
    """List the models in the hives' stores."""
    from rbee.cli.output import emit_json, table

    with ctx.client() as queen:
        names = [hive] if hive else [h.name for h in queen.hives() if h.status == "online"]
        found = {name: queen.models(name) for name in names}
    if as_json:
        emit_json([{"hive": name, "models": models} for name, models in found.items()])
        return
    rows = [
        {
            "hive": name,
            "model": m.name,
            "architecture": m.architecture,
            "context": m.context_length,
            "precisions": m.precisions,
            "chat": m.chat,
            "size_mb": m.size_bytes / 1e6,
        }
        for name, models in found.items()
        for m in models
    ]
    columns = ["hive", "model", "architecture", "context", "precisions", "chat", "size_mb"]
    table(rows, columns, empty="no models on " + (f"hive {hive}" if hive else "any online hive"))


@model.command()
@click.argument("name")
@click.option("--hive", required=True, help="The hive to install it on.")
@click.option(
    "--precision",
    "precision",
    type=click.Choice(["int4", "fp16", "fp32"]),
    multiple=True,
    help="A graph to install (repeat for more; default: every graph the queen's store has): a "
    "GPU host's workers need fp16 only, a CPU host's int4.",
)
@queen_options
@pass_context
def pull(ctx: Context, name: str, hive: str, precision: tuple[str, ...]) -> None:
    """Install model NAME on HIVE from the queen's own store (resumable, sha256-checked)."""
    from rbee.wire.hive import Importing, Pulled, PullProgress
    from rbee.wire.worker import Precision

    bars: dict[str, ProgressBar] = {}
    with ctx.client() as queen:
        for event in queen.pull(hive, name, cast("tuple[Precision, ...]", precision)):
            if isinstance(event, PullProgress):
                bar = bars.setdefault(event.file, ProgressBar(f"{name}/{event.file}"))
                bar(event.done, event.total)
            elif isinstance(event, Importing):
                bar = bars.setdefault(event.file, ProgressBar(f"importing {event.file}"))
                bar(event.step, event.steps)
            elif isinstance(event, Pulled):
                click.echo(
                    f"pulled {event.name} onto hive {hive}: {event.size_bytes / 1e6:.1f} MB, "
                    f"{event.downloaded_bytes / 1e6:.1f} MB downloaded, "
                    f"{event.resumed_bytes / 1e6:.1f} MB resumed, sha256 verified"
                )


@model.command("rm")
@click.argument("name")
@click.option("--hive", required=True, help="The hive to remove it from.")
@queen_options
@pass_context
def rm(ctx: Context, name: str, hive: str) -> None:
    """Remove model NAME from HIVE's store (refused while a worker serves it)."""

    with ctx.client() as queen:
        removed = queen.remove_model(hive, name)
    click.echo(f"removed {removed.name} from hive {hive}")
