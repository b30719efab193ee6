"""``rbee config show`` and ``rbee config set KEY VALUE``."""

from __future__ import annotations

import click

from rbee import config as config_mod
from rbee.cli.common import Context, Group, json_option, pass_context
from rbee.cli.output import emit_json

__all__ = ["config"]


@click.group(cls=Group)
def config() -> None:
    """Show or change settings in the config file.

    Settings are SECTION.KEY (sections: keeper, queen, hive, worker). Each can also be set with
    the environment variable RBEE_<SECTION>_<KEY> or, where the command has one, a flag.
    """


@config.command("show")
@json_option
@pass_context
def show(ctx: Context, as_json: bool) -> None:
    """Print the effective settings (defaults, file and environment merged)."""
    values = config_mod.as_dict(ctx.config)
    if as_json:
        emit_json({"path": str(ctx.config.path), **values})
        return
    click.echo(f"# {ctx.config.path}")
    for section, keys in values.items():
        click.echo(f"[{section}]")
        for key, value in keys.items():
            click.echo(f"{key} = {value!r}")


@config.command("set")
@click.argument("key")
@click.argument("value")
@pass_context
def set_(ctx: Context, key: str, value: str) -> None:
    """Set KEY (SECTION.KEY, e.g. keeper.queen_url) to VALUE in the config file."""
    path = ctx.config_path or config_mod.default_config_path()
    parsed = config_mod.set_value(path, key, value)
    click.echo(f"{key} = {parsed!r}  ({path})")
