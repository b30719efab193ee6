"""The one entry point: ``rbee.pyz`` / ``python -m rbee`` / ``rbee``.

One module per command group: ``queen``, ``hive`` and ``worker`` start the daemons (``rbee queen``,
``rbee hive daemon``, ``rbee worker daemon``; the daemons themselves live in `rbee.queen`,
`rbee.hive` and `rbee.worker` and import nothing from here) and manage them through the queen;
``infer``, ``status``, ``job``, ``model``, ``policy``, ``key`` and ``config`` are the keeper's
commands.
`rbee.cli.common` holds the shared context and options, `rbee.cli.output` the tables and JSON.
Every command module is imported only when its command runs, so ``--version`` and ``--help`` stay
fast and each mode pays only for what it uses.

Conventions kept by every command: errors are one line on stderr (``-v`` adds the traceback),
exit codes are 0 ok / 1 failure / 2 usage, a group given no command prints its help, list and
status commands take ``--json``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from rbee import __version__, pythons
from rbee.cli.common import Context, Group, queen_option, token_option
from rbee.errors import RbeeError

__all__ = ["COMMANDS", "cli", "main"]

# name -> (module:attribute, one-line help). Daemon modes first, then keeper commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "queen": ("rbee.cli.queen:queen", "Run the queen daemon: scheduling, job queue, API."),
    "hive": ("rbee.cli.hive:hive", "Run a hive daemon, or add and start hives on other hosts."),
    "worker": (
        "rbee.cli.worker:worker",
        "Run a worker daemon (one model on one device), or spawn, list and retire workers.",
    ),
    "infer": ("rbee.cli.infer:infer", "Send a prompt to the queen and print the tokens."),
    "status": ("rbee.cli.status:status", "Show workers, queue depth, policy and recent errors."),
    "job": ("rbee.cli.job:job", "List, show or cancel jobs ('jobs' works too)."),
    "model": ("rbee.cli.model:model", "Import, list, pull and remove models."),
    "policy": ("rbee.cli.policy:policy", "Check, test, explain and replay scheduling policies."),
    "key": ("rbee.cli.key:key", "Create, list and revoke API keys (admin)."),
    "config": ("rbee.cli.config:config", "Show or change settings in the config file."),
}

# Other spellings that work but are not listed: group names are singular.
ALIASES = {"jobs": "job"}


class LazyGroup(Group):
    """A group whose subcommands are imported only when they run (or ``--help`` lists them)."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self._lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target, _ = self._lazy.get(ALIASES.get(cmd_name, cmd_name), ("", ""))
        if not target:
            return None
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
@queen_option("The queen's URL, for the command that follows (default keeper.queen_url).")
@token_option("The API token, for the command that follows (default keeper.token).")
@click.pass_context
def cli(ctx: click.Context, verbose: int, config_path: Path | None) -> None:
    """rbee: run LLMs on the GPUs you have.

    Start the queen on one machine (`rbee queen`); it starts a hive on each host and workers on
    demand. Then send prompts from anywhere with `rbee infer`, or point any OpenAI client at the
    queen's /v1 API.

    --queen and --token may come before the command or after it (`rbee --queen URL infer ...` or
    `rbee infer --queen URL ...`); a command that takes no such option refuses it.
    """
    from rbee import log

    log.configure(verbose)
    shared = ctx.ensure_object(Context)
    shared.config_path = config_path
    shared.verbose = verbose


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
        # A group given no command: its help is the answer, not a usage error.
        click.echo(err.ctx.get_help() if err.ctx else str(err))
        sys.exit(0)
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
