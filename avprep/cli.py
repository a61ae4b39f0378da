"""The ``avprep`` entry point: process-level concerns around the app (``cli_app``).

``main`` imports the app (typer, rich and every command's module: ~0.2 s) only after,
for ``avprep shard``, the workers' forkserver has been started (``worker_start``), so the
server's imports run beside the command line's own. This module imports nothing else at
module level: multiprocessing has every worker run the console script again as its main
script (``from avprep.cli import main``), which then costs a worker nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def main() -> None:
    """Entry point: usage errors (unknown options, bad values) also get one line, exit 2."""
    args = sys.argv[1:] or ["--help"]  # bare avprep: its help, exit 0
    if args[0] == "shard" and not {"--help", "-h"} & set(args):
        from avprep.worker_start import start_early  # noqa: PLC0415

        start_early()  # called otherwise, the pool starts the server when it needs it
    from avprep.cli_app import app  # noqa: PLC0415
    from avprep.cli_messages import err  # noqa: PLC0415

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
