"""One base class for every cmac_core error a person should see as one line.

The CLI catches ``CmacError`` by type and prints its message without a
traceback; anything else is a bug and keeps its traceback.

A message is in the library's words: it names Python parameters and config fields
(``run_dir``, ``optim.batch_size``), never command-line flags, so a caller of
``pretrain()`` or ``embed()`` reads what to change in its own call. Where the command line
words it differently (``--out``, ``--batch-size``), the raise gives that wording too as
``cli``, and the CLI prints it instead (``cli_message``).
"""

from __future__ import annotations


class CmacError(ValueError):
    """A one-line problem with arguments, shards, a checkpoint, the run or its folder."""

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli


def cli_message(e: BaseException) -> str:
    """What the command line shows for ``e``: its ``cli`` wording, else its message."""
    return getattr(e, "cli", None) or str(e)
