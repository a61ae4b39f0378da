"""The ``avprep`` command line: the app, its commands in the order ``--help`` lists them,
and the entry point.

Each command lives with its group (parse -> config -> one library call):
``cli_shard`` (shard, inspect), ``cli_synth`` (synth, demo), ``cli_train`` (pretrain,
evaluate), ``cli_embed`` (embed, localize); the options they share are in ``cli_options``,
what they say to people in ``cli_messages``. Nothing heavy is imported at module level,
so ``avprep --help`` is instant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import typer

from avprep.cli_embed import embed, localize
from avprep.cli_messages import err, out
from avprep.cli_shard import inspect, shard
from avprep.cli_synth import demo, synth
from avprep.cli_train import evaluate, pretrain

app = typer.Typer(
    name="avprep",
    help="Any video -> time-synchronized WebDataset shards of frames and log-mel spectrograms.",
    pretty_exceptions_enable=False,
)
for _command in (shard, inspect, synth, evaluate, demo, pretrain, embed, localize):
    app.command()(_command)


def _print_version(value: bool) -> None:
    if value:
        from avprep import __version__  # noqa: PLC0415

        out.print(f"avprep {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Any video -> time-synchronized WebDataset shards of frames and log-mel spectrograms."""


def main() -> None:
    """Entry point: usage errors (unknown options, bad values) also get one line, exit 2."""
    args = sys.argv[1:] or ["--help"]  # bare avprep: its help, exit 0
    try:
        code = app(args=args, prog_name="avprep", standalone_mode=False)
    except Exception as e:
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise  # a bug, not a usage error: keep the traceback
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(
            f"avprep: error: {e.format_message()}{where}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(e.exit_code)
    code = code if isinstance(code, int) else 0
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1:
        _leave_rank(code)
    sys.exit(code)


def _leave_rank(code: int) -> None:
    """End a torchrun rank whose command has returned (its outputs written and committed,
    its process group destroyed) without the interpreter's teardown, where native thread
    pools (gloo's, Arrow's) are destroyed in an order that, now and then, aborts the
    process (``terminate called without an active exception``: seen once in CI, a rank of
    ``localize`` after its work was done), and torchrun then fails the whole job."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
