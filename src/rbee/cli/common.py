"""What every command module shares: the `Context`, the shared options and the checking `Group`.

``--queen URL`` and ``--token`` are defined here once. The root command takes them (before the
subcommand) and so does every command that uses them (after it); both land on the `Context`. A
command that takes neither refuses them when they are given before it: `Group` checks that when
it picks the command, so an option is never silently dropped.

Nothing here imports more than click: ``rbee --version`` and ``rbee --help`` load this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rbee.config import Config
    from rbee.queen.client import QueenClient

__all__ = [
    "Context",
    "Group",
    "json_option",
    "pass_context",
    "queen_option",
    "queen_options",
    "token_option",
]

F = TypeVar("F", bound=Callable[..., Any])

# The Context fields that the root command may set for the command it runs, and their flags.
_SHARED = {"queen_url": "--queen", "token": "--token"}


@dataclasses.dataclass
class Context:
    """What the root command hands to every subcommand."""

    config_path: Path | None = None
    verbose: int = 0
    queen_url: str | None = None
    token: str | None = None
    _config: Config | None = None

    @property
    def config(self) -> Config:
        """The effective `rbee.config.Config`, loaded on first use."""
        if self._config is None:
            from rbee import config

            self._config = config.load(self.config_path)
        return self._config

    def queen(self) -> str:
        """The queen's URL: ``--queen``, else ``RBEE_KEEPER_QUEEN_URL``, else the config file."""
        return self.queen_url or str(self.config.keeper.queen_url)

    def client(self) -> QueenClient:
        """A client for the queen this command line points at, with its token.

        Without ``--token`` or ``keeper.token``, a queen on this machine's loopback is sent the
        cluster secret from its data directory, when this user can read it (the admin
        credential: see `rbee.queen.auth`); it is never sent to another host.
        """
        from rbee.queen.client import QueenClient

        keeper = self.config.keeper
        url = self.queen()
        token = self.token or keeper.token or self.local_secret(url)
        return QueenClient(url, token, keeper.timeout_s)

    def local_secret(self, url: str) -> str:
        """The cluster secret of the queen at ``url`` if it runs here and this user can read it
        (else "")."""
        import urllib.parse

        from rbee.config import is_loopback
        from rbee.queen.keys import secret_path

        host = urllib.parse.urlsplit(url).hostname or ""
        if not is_loopback(host):
            return ""
        try:
            return secret_path(self.config.queen).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""


pass_context = click.make_pass_decorator(Context)


def json_option(f: F) -> F:
    """``--json``: print machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def _into_context(click_ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """Store a shared option's value on the `Context`; refuse two different values."""
    if value is None or param.name is None:
        return
    ctx = click_ctx.ensure_object(Context)
    before = getattr(ctx, param.name)
    if before is not None and before != value:
        raise click.UsageError(
            f"{_SHARED[param.name]} is given twice, before and after "
            f"'{click_ctx.info_name}', with different values",
            click_ctx,
        )
    setattr(ctx, param.name, value)


def queen_option(help: str = "The queen's URL (default keeper.queen_url).") -> Callable[[F], F]:
    """``--queen URL``, stored as `Context.queen_url`."""
    return click.option(
        "--queen",
        "queen_url",
        metavar="URL",
        help=help,
        expose_value=False,
        callback=_into_context,
    )


def token_option(help: str = "API token for the queen (default keeper.token).") -> Callable[[F], F]:
    """``--token``, stored as `Context.token`; ``help`` says what the token is for."""
    return click.option("--token", "token", help=help, expose_value=False, callback=_into_context)


def queen_options(f: F) -> F:
    """``--queen`` and ``--token``: every command that talks to the queen takes both."""
    return queen_option()(token_option()(f))


class Group(click.Group):
    """A command group that refuses a root ``--queen``/``--token`` its chosen command lacks."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None and not isinstance(command, click.Group):
            _check_applies(ctx, name or command.name or "", command)
        return name, command, rest


def _check_applies(ctx: click.Context, name: str, command: click.Command) -> None:
    shared = ctx.find_object(Context)
    if shared is None:
        return
    takes = {p.name for p in command.params}
    for field, flag in _SHARED.items():
        if getattr(shared, field) is not None and field not in takes:
            raise click.UsageError(f"{flag} does not apply to '{ctx.command_path} {name}'", ctx)
