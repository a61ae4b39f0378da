"""The ``avprep`` command line's app: its commands in the order ``--help`` lists them (the
entry point is ``avprep.cli.main``).

Each command lives with its group (parse -> config -> one library call):
``cli_shard`` (shard, inspect), ``cli_synth`` (synth, demo), ``cli_train`` (pretrain,
evaluate), ``cli_embed`` (embed, localize); the options they share are in ``cli_options``,
what they say to people in ``cli_messages``. Nothing heavy is imported at module level,
so ``avprep --help`` is instant.
"""

from __future__ import annotations

import typer

from avprep.cli_embed import embed, localize
from avprep.cli_messages import out
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
