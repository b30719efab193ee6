"""``rbee policy check|compile|test|explain|replay``: work with scheduling policy files.

A policy file is policy source, or YAML rules (``*.yaml``, ``*.yml``) that compile to it; every
command that takes a file takes either. ``check``, ``compile`` and ``test`` run locally on a file. ``explain`` and ``replay`` read the queen's decision
log (``GET /v1/decisions``): why one job went where it went, and what a new policy would have
decided for the last N jobs on the very cluster snapshots the queen saw.
"""

from __future__ import annotations

from pathlib import Path

import click

from rbee.cli.common import Context, Group, json_option, pass_context, queen_options
from rbee.cli.output import emit_json
from rbee.errors import NotFoundError, PolicyError, UsageError
from rbee.policy import load_file
from rbee.policy.cases import load_cases, run_case, summary
from rbee.policy.rules import compile_rules, is_rules_file
from rbee.queen.drafts import recorded, replay
from rbee.wire.queen import DecisionRecord

__all__ = ["policy"]

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group(cls=Group)
def policy() -> None:
    """Check, compile, test, explain and replay scheduling policies.

    A policy is a small file (see docs/policies.md and the examples in policies/) with
    fn schedule_job(job, workers[, hives]) that returns a worker, reject(reason),
    spawn(hive, model) or queue(); or YAML rules (rules.yaml: conditions and actions, first
    match wins), which compile to one.
    """


@policy.command("check")
@click.argument("file", type=_FILE)
def check_cmd(file: Path) -> None:
    """Parse and compile FILE: syntax, names, fields, helpers and their arguments."""
    compiled = load_file(file)
    lines = compiled.source.count("\n") + 1
    click.echo(f"{file}: ok ({lines} lines)")


@policy.command("compile")
@click.argument("file", type=_FILE)
def compile_cmd(file: Path) -> None:
    """Print the policy that the YAML rules in FILE (.yaml or .yml) compile to.

    The rules are checked the way the queen loads them first: an error names the YAML line and
    column.
    """
    if not is_rules_file(file):
        raise UsageError(f"{file} is not a YAML rules file (.yaml or .yml): nothing to compile")
    compiled = load_file(file)
    click.echo(compile_rules(compiled.source, str(file)), nl=False)


@policy.command("test")
@click.argument("file", type=_FILE)
@click.argument("cases", type=_FILE)
@click.option("-v", "--verbose", is_flag=True, help="Print every decision's reasons.")
@json_option
def test_cmd(file: Path, cases: Path, verbose: bool, as_json: bool) -> None:
    """Run FILE on each case in CASES (TOML or JSON) and compare with the expected decision.

    Exits 1 if any case fails.
    """
    compiled = load_file(file)
    results = [run_case(compiled, case, snapshot) for case, snapshot in load_cases(cases)]
    if as_json:
        emit_json([r.__dict__ for r in results])
    else:
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            detail = f" ({r.problem})" if r.problem else ""
            click.echo(f"{status}  {r.name}: {r.got}{detail}")
            if verbose or not r.passed:
                for reason in r.reasons:
                    click.echo(f"        {reason}")
        click.echo(summary(results))
    failed = sum(not r.passed for r in results)
    if failed:
        raise PolicyError(f"{failed} of {len(results)} cases failed", filename=str(cases))


def _decisions(ctx: Context, last: int, job_id: str | None = None) -> list[DecisionRecord]:
    with ctx.client() as queen:
        return queen.decisions(last, job_id)


@policy.command("explain")
@click.argument("job_id")
@json_option
@queen_options
@pass_context
def explain_cmd(ctx: Context, job_id: str, as_json: bool) -> None:
    """Show how the queen placed JOB_ID: the policy, the decision and every step behind it."""
    records = _decisions(ctx, 1, job_id)
    if not records:
        raise NotFoundError(f"no scheduling decision is logged for job {job_id}")
    record = records[-1]
    if as_json:
        emit_json(record)
        return
    job = record.job
    click.echo(
        f"job      {record.job_id}  model={job.model} priority={job.priority} tenant={job.tenant or '-'}"
    )
    click.echo(f"policy   {record.policy}")
    click.echo(f"decision {recorded(record)}")
    if record.error:
        click.echo(f"error    {record.error}")
    click.echo(
        f"cluster  {len(record.snapshot.workers)} workers, {len(record.snapshot.hives)} hives"
    )
    click.echo("reasons")
    for i, reason in enumerate(record.reasons, 1):
        click.echo(f"  {i}. {reason}")


@policy.command("replay")
@click.argument("file", type=_FILE)
@click.option(
    "--last",
    "last",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="How many of the latest decisions to replay.",
)
@json_option
@queen_options
@pass_context
def replay_cmd(ctx: Context, file: Path, last: int, as_json: bool) -> None:
    """Re-run the queen's last decisions with FILE and show where it would choose differently."""
    replayed = replay(load_file(file), _decisions(ctx, last))
    rows = [
        {
            "job_id": r.job_id,
            "was": r.was,
            "now": f"{r.now.kind} {r.now.target}" if r.now.target else r.now.kind,
            "changed": r.changed,
            "error": r.now.reasons[0] if r.now.kind == "error" else None,
            "detail": r.now.reasons[0] if r.now.kind == "error" else r.now.text,
        }
        for r in replayed.rows
    ]
    changed = [r for r in rows if r["changed"]]
    errors = sum(1 for r in rows if r["error"])
    if as_json:
        emit_json(
            {"replayed": len(rows), "changed": len(changed), "errors": errors, "decisions": rows}
        )
        return
    for r in changed:
        click.echo(f"{r['job_id']}  {r['was']}  ->  {r['detail']}")
    click.echo(
        f"{len(rows)} decisions replayed with {file.name}: {len(rows) - len(changed)} the same, "
        f"{len(changed)} different, {errors} policy errors"
    )
