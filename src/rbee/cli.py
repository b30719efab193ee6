"""The one entry point: ``rbee.pyz`` / ``python -m rbee`` / ``rbee``.

Keeper commands talk to the queen's HTTP API; ``queen``, ``hive`` and ``worker`` run the daemons.
Every command module is imported only when its command runs, so ``--version`` and ``--help`` stay
fast and each mode pays only for what it uses.

Conventions kept by every command: errors are one line on stderr (``-v`` adds the traceback),
exit codes are 0 ok / 1 failure / 2 usage, list and status commands take ``--json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from rbee import __version__, pythons
from rbee.errors import RbeeError

__all__ = ["Context", "json_option", "main", "pass_context"]

# name -> (module:attribute, one-line help). Daemon modes first, then keeper commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "queen": ("rbee.queen.cli:queen", "Run the queen daemon: scheduling, job queue, API."),
    "worker": (
        "rbee.worker.cli:worker",
        "Run a worker daemon (one model on one device), or manage workers.",
    ),
    "hive": ("rbee.hive.cli:hive", "Run a hive daemon (one per host), or list hives."),
    "infer": ("rbee.keeper.infer:infer", "Send a prompt to the queen and print the tokens."),
    "status": ("rbee.keeper.status:status", "Show workers, queue depth and recent errors."),
    "jobs": ("rbee.keeper.jobs:jobs", "List, show or cancel jobs."),
    "model": ("rbee.keeper.models:model", "Import, list, pull and remove models."),
    "config": ("rbee.keeper.config_cmd:config", "Show or change settings in the config file."),
    "policy": ("rbee.keeper.policy:policy", "Check, test, explain and replay scheduling policies."),
}

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Context:
    """What the root command hands to every subcommand."""

    config_path: Path | None
    verbose: int
    queen_url: str | None
    _config: Any = None

    @property
    def config(self) -> Any:
        """The effective `rbee.config.Config`, loaded on first use."""
        if self._config is None:
            from rbee import config

            self._config = config.load(self.config_path)
        return self._config

    def queen(self) -> str:
        """The queen's URL: ``--queen``, else ``RBEE_KEEPER_QUEEN_URL``, else the config file."""
        return self.queen_url or str(self.config.keeper.queen_url)


pass_context = click.make_pass_decorator(Context)


def json_option(f: F) -> F:
    """``--json``: print machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when they run (or ``--help`` lists them)."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._lazy:
            return None
        target, _ = self._lazy[cmd_name]
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help comes from the table, so --help imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in self._lazy.items()])


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(
    __version__, "-V", "--version", prog_name="rbee", message="%(prog)s %(version)s"
)
@click.option("-v", "--verbose", count=True, help="More output: -v info logs, -vv debug logs.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default ~/.config/rbee/config.toml, or $RBEE_CONFIG).",
)
@click.option("--queen", "queen_url", metavar="URL", help="The queen's URL (default from config).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, config_path: Path | None, queen_url: str | None) -> None:
    """rbee: run LLMs on the GPUs you have.

    Start the queen on one machine (`rbee queen`); it starts a hive on each host and workers on
    demand. Then send prompts from anywhere with `rbee infer`, or point any OpenAI client at the
    queen's /v1 API.
    """
    from rbee import log

    log.configure(verbose)
    ctx.obj = Context(config_path=config_path, verbose=verbose, queen_url=queen_url)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"rbee: error: {message}", err=True)
    sys.exit(code)


def _check_python() -> None:
    if not pythons.is_supported(sys.version_info):
        _fail(pythons.refusal(f"Python {sys.version.split()[0]}", sys.executable), 1)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn every error into one line on stderr and an exit code."""
    _check_python()
    verbose = sum(a.count("v") for a in (argv or sys.argv[1:]) if a.startswith("-v"))
    try:
        cli.main(args=argv, prog_name="rbee", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        click.echo(err.ctx.get_help() if err.ctx else str(err))
        sys.exit(2)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        _fail(f"{err.format_message()}{hint}", 2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except RbeeError as err:
        if verbose:
            logging.getLogger("rbee").exception("error")
        _fail(str(err), err.exit_code)
    except click.ClickException as err:
        _fail(err.format_message(), err.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as err:
        if verbose:
            raise
        _fail(f"unexpected {type(err).__name__}: {err} (run with -v for the traceback)", 1)
