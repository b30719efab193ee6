"""``rbee infer``: send a prompt through the queen and print the tokens as they arrive."""

from __future__ import annotations

import sys

import click

from rbee.cli.common import Context, pass_context, queen_options
from rbee.wire.queen import InferOperation
from rbee.wire.worker import ChatMessage, Finished

__all__ = ["infer"]


@click.command()
@click.option("--model", "-m", required=True, help="The model to run (as workers serve it).")
@click.option("--prompt", "-p", required=True, help="The prompt (a user message; see --raw).")
@click.option(
    "--chat/--raw",
    default=True,
    show_default=True,
    help="Send the prompt as one user chat message (the model's chat template applies, which an "
    "instruct model needs), or as raw text to continue.",
)
@click.option("--max-tokens", type=click.IntRange(1, 32768), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), default=0.7, show_default=True)
@click.option("--seed", type=int, help="Fix the sampling seed (same seed, same text).")
@click.option(
    "--priority",
    type=click.Choice(["interactive", "batch"]),
    default="interactive",
    show_default=True,
    help="Interactive jobs are served before batch jobs.",
)
@click.option("--no-stream", is_flag=True, help="Print the whole answer at the end.")
@queen_options
@pass_context
def infer(
    ctx: Context,
    model: str,
    prompt: str,
    chat: bool,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    priority: str,
    no_stream: bool,
) -> None:
    """Send a prompt to the queen and print the tokens."""
    job = InferOperation(
        model=model,
        prompt=None if chat else prompt,
        messages=[ChatMessage(role="user", content=prompt)] if chat else None,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        priority="batch" if priority == "batch" else "interactive",
    )
    with ctx.client() as queen:
        job_id = ""
        pieces: list[str] = []
        finished: Finished | None = None
        for event in queen.run(job):
            if isinstance(event, str):
                job_id = event
            elif isinstance(event, Finished):
                finished = event
            elif no_stream:
                pieces.append(event.t)
            else:
                sys.stdout.write(event.t)
                sys.stdout.flush()
        if no_stream:
            sys.stdout.write("".join(pieces))
        sys.stdout.write("\n")
        sys.stdout.flush()
        if finished is not None and ctx.verbose:
            t = finished.timings
            click.echo(
                f"{job_id}: {finished.usage.completion_tokens} tokens, "
                f"finish={finished.finish_reason}, ttft={t.ttft_ms:.0f} ms, "
                f"{t.tokens_per_s:.1f} tokens/s",
                err=True,
            )
