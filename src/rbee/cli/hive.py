"""``rbee hive daemon``: run the hive daemon; ``rbee hive list``: the hives, through the queen;
``rbee hive add|trust|start|upgrade|stop|status|logs|remove``: hives on other hosts, which the
queen reaches over SSH (the keeper only calls the queen's API).

Nothing heavy is imported until a command runs: the daemon's modules load only when it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rbee.cli.common import (
    Context,
    Group,
    json_option,
    pass_context,
    queen_option,
    queen_options,
    token_option,
)

if TYPE_CHECKING:
    from rbee.config import HiveConfig

__all__ = ["hive"]


@click.group(cls=Group)
def hive() -> None:
    """Run a hive daemon (one per host), or add, start and manage hives on other hosts.

    The queen starts the hive on its own machine. For another host: 'rbee hive add NAME --ssh
    USER@HOST', 'rbee hive trust NAME', 'rbee hive start NAME': the queen copies itself there
    over SSH and starts the hive. 'rbee hive daemon --queen URL' runs one by hand.
    """


@hive.command()
@queen_option("The queen to heartbeat to (default hive.queen_url).")
@click.option("--name", help="This hive's name (default: the host name).")
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind; 0 picks a free one.")
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False),
    help="Model store directory (default ~/.cache/rbee/models).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where worker logs go (default ~/.local/share/rbee/hive).",
)
@token_option(
    "API token: required from callers, sent to the queen (default hive.token; for a queen on "
    "this machine whose cluster secret this user can read, this hive's own token from it)."
)
@click.option(
    "--heartbeat-interval",
    "heartbeat_interval_s",
    type=click.FloatRange(0.05, 3600),
    help="Seconds between heartbeats (default 1).",
)
@pass_context
def daemon(
    ctx: Context,
    name: str | None,
    host: str | None,
    port: int | None,
    models_dir: str | None,
    state_dir: str | None,
    heartbeat_interval_s: float | None,
) -> None:
    """Run the hive daemon until SIGTERM or SIGINT.

    The hive starts and stops workers for the queen, reports the host's and each worker's use of
    CPU, memory and GPUs in a heartbeat every second, and keeps the host's model store. It prints
    'rbee hive listening on http://HOST:PORT' once bound and stops its workers when it stops.
    """
    from functools import partial

    import trio

    from rbee import config as config_mod
    from rbee.hive.daemon import run_hive

    settings = config_mod.override(
        ctx.config.hive,
        queen_url=ctx.queen_url,
        name=name,
        host=host,
        port=port,
        models_dir=models_dir,
        state_dir=state_dir,
        token=ctx.token,
        heartbeat_interval_s=heartbeat_interval_s,
    )
    if not settings.token:
        settings = config_mod.override(settings, token=_own_token(ctx, settings))
    store = ctx.config.models_dir(settings.models_dir)
    state = (
        Path(settings.state_dir).expanduser()
        if settings.state_dir
        else config_mod.default_data_dir() / "hive"
    )
    trio.run(partial(run_hive, settings, store, state, worker_defaults=ctx.config.worker))


def _own_token(ctx: Context, settings: HiveConfig) -> str | None:
    """A hive started by hand without a token, for a queen on this machine whose cluster secret
    this user can read, takes its own hive token from that secret, of the generation the queen's
    database holds for its name (else it has none)."""
    from rbee.hive.daemon import default_hive_name
    from rbee.queen.db import db_path
    from rbee.queen.keys import hive_epoch, hive_token

    secret = ctx.local_secret(settings.queen_url)
    if not secret:
        return None
    name = settings.name or default_hive_name()
    return hive_token(secret, name, hive_epoch(db_path(ctx.config.queen), name))


@hive.command("list")
@json_option
@queen_options
@pass_context
def list_(ctx: Context, as_json: bool) -> None:
    """List hives: online or offline (and draining, while upgraded), host telemetry, models."""
    from rbee.cli.output import emit_json, table

    with ctx.client() as queen:
        hives = queen.hives()
        workers = queen.workers()
    if as_json:
        emit_json(hives)
        return
    counts: dict[str, int] = {}
    for w in workers:
        counts[w.hive] = counts.get(w.hive, 0) + 1
    rows = [
        {
            "hive": h.name,
            "status": f"{h.status} (draining)" if h.draining else h.status,
            "url": h.url,
            "workers": counts.get(h.name, 0),
            "cpus": h.host.cpu_count,
            "ram_free_mb": h.host.ram_free_mb,
            "ram_total_mb": h.host.ram_total_mb,
            "gpus": len(h.host.gpus),
            "models": h.models,
            "seen_s": h.last_seen_s,
        }
        for h in hives
    ]
    columns = ["hive", "status", "url", "workers", "cpus", "ram_free_mb", "ram_total_mb", "gpus"]
    table(rows, [*columns, "models", "seen_s"], empty="no hives have reported to this queen")


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--label")
        labels[key] = value
    return labels


@hive.command()
@click.argument("name")
@click.option(
    "--ssh",
    "address",
    required=True,
    metavar="USER@HOST[:PORT]|ALIAS",
    help="How the queen reaches the host (an alias resolves as in ~/.ssh/config).",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Private key file (default: your agent, ~/.ssh/config, ~/.ssh/id_*).",
)
@click.option("--python", metavar="PATH", help="The interpreter to run rbee with on the host.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="A label for policies.")
@click.option(
    "--tunnel",
    is_flag=True,
    help="All traffic over the queen's SSH connection (a host that lets only SSH in).",
)
@queen_options
@pass_context
def add(
    ctx: Context,
    name: str,
    address: str,
    identity: Path | None,
    python: str | None,
    labels: tuple[str, ...],
    tunnel: bool,
) -> None:
    """Register hive NAME on a host the queen reaches over SSH (then: 'rbee hive trust NAME')."""
    from rbee.wire.hosts import HiveAdd

    request = HiveAdd(
        name=name,
        ssh=address,
        identity=str(identity.resolve()) if identity else "",
        python=python or "",
        labels=_labels(labels),
        tunnel=tunnel,
    )
    with ctx.client() as queen:
        added = queen.add_hive(request)
    click.echo(f"registered hive {added.name} at {added.ssh}; next: 'rbee hive trust {name}'")


@hive.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask (needs --fingerprint).")
@click.option("--fingerprint", metavar="SHA256:...", help="The key you checked, for --yes.")
@queen_options
@pass_context
def trust(ctx: Context, name: str, yes: bool, fingerprint: str | None) -> None:
    """Show the host key hive NAME's host offers and record it as trusted.

    Compare the fingerprint with the host's own ('ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub'
    there). Keys already in ~/.ssh/known_hosts are trusted as they are.
    """
    if yes and not fingerprint:
        raise click.UsageError("--yes needs --fingerprint SHA256:... (the key you checked)")
    with ctx.client() as queen:
        if not fingerprint:
            offered = queen.trust(name)
            click.echo(
                f"{offered.host}:{offered.port} offers {offered.key.split()[0]} {offered.fingerprint}"
            )
            if not click.confirm("Trust this key?", default=False):
                raise click.Abort
            fingerprint = offered.fingerprint
        trusted = queen.trust(name, fingerprint)
    click.echo(f"trusted {trusted.fingerprint} for hive {name} ({trusted.host}:{trusted.port})")


def _deploy(ctx: Context, name: str, *, upgrade: bool) -> None:
    from rbee.cli.output import ProgressBar
    from rbee.wire.hosts import PushProgress

    bar = ProgressBar(f"copying rbee.pyz to {name}")
    with ctx.client() as queen:
        for event in queen.start_hive(name, upgrade=upgrade):
            if isinstance(event, PushProgress):
                bar(event.copied, event.total)
            else:
                click.echo(f"{event.message} in {event.seconds:.1f} s")


@hive.command()
@click.argument("name")
@queen_options
@pass_context
def start(ctx: Context, name: str) -> None:
    """Start hive NAME: check the host, copy rbee.pyz there if it lacks it, start the hive.

    Nothing changes when the hive already runs this rbee.
    """
    _deploy(ctx, name, upgrade=False)


@hive.command()
@click.argument("name")
@queen_options
@pass_context
def upgrade(ctx: Context, name: str) -> None:
    """Run hive NAME on the queen's rbee.pyz; the previous file comes back if it fails.

    The hive is drained first: no new jobs go to it, and those running end (up to the queen's
    drain grace, 30 s by default; what still runs then continues on other workers).
    """
    _deploy(ctx, name, upgrade=True)


@hive.command()
@click.argument("name")
@queen_options
@pass_context
def stop(ctx: Context, name: str) -> None:
    """Stop hive NAME: drain it, then it retires its workers and exits.

    No new job goes to the hive; the jobs running there end first (up to the queen's drain
    grace, 30 s by default; what still runs then continues on other workers). The queen asks
    the hive through its API; over SSH (its pid) when that does not work.
    """
    with ctx.client() as queen:
        click.echo(queen.stop_hive(name).message)


@hive.command()
@click.argument("name")
@queen_options
@pass_context
def remove(ctx: Context, name: str) -> None:
    """Stop hive NAME if it runs and forget it."""
    with ctx.client() as queen:
        click.echo(queen.remove_hive(name).message)


@hive.command()
@click.argument("name")
@json_option
@queen_options
@pass_context
def status(ctx: Context, name: str, as_json: bool) -> None:
    """Show hive NAME as registered: its SSH address, labels, and whether it reports."""
    from rbee.cli.output import emit_json, table

    with ctx.client() as queen:
        shown = queen.host_hive(name)
    if as_json:
        emit_json(shown)
        return
    row = {
        "hive": shown.name,
        "status": shown.status,
        "ssh": shown.ssh,
        "url": shown.url,
        "labels": ",".join(f"{k}={v}" for k, v in sorted(shown.labels.items())),
        "auto_start": shown.auto_start,
    }
    table([row], list(row), empty="")


@hive.command()
@click.argument("name")
@click.option("-n", "--lines", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the hive writes.")
@queen_options
@pass_context
def logs(ctx: Context, name: str, lines: int, follow: bool) -> None:
    """Print the last lines of hive NAME's log (read over SSH by the queen)."""
    with ctx.client() as queen:
        if not follow:
            for line in queen.hive_logs(name, lines):
                click.echo(line)
            return
        for batch in queen.follow_hive_logs(name, lines):
            for line in batch:
                click.echo(line)
