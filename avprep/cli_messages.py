"""What the command line says to people: its consoles, and errors as one line.

``one_line_errors`` turns AvprepError, cmac_core's ``CmacError`` (caught by type),
storage errors and Ctrl-C or SIGTERM into one line and an exit code;
``report_damage`` names what readers passed over; ``import_for`` names the extra a
training command needs when its packages are missing.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
from types import ModuleType
from typing import NoReturn

import typer
from rich.console import Console

from avprep.errors import AvprepError
from avprep.interrupts import sigterm_as_interrupt

err = Console(stderr=True)
out = Console(soft_wrap=True)  # paths are never broken across lines


# A full disk, a quota, a read-only or forbidden folder: the machine's state, said in one line.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


RESUME = "run the same command again to resume"


@contextlib.contextmanager
def one_line_errors(again: str = RESUME):
    """A person's error -> ``avprep: error: ...`` on stderr and an exit code, no traceback:
    AvprepError (its exit code), cmac_core's CmacError (2; caught by type, so every
    subclass, also one raised in a worker and chained), a full or forbidden disk (2),
    Ctrl-C or SIGTERM (Slurm's scancel; 130, "interrupted; " + ``again``). Anything else is
    a bug and keeps its traceback."""
    try:
        with sigterm_as_interrupt():
            yield
    except typer.Exit:
        raise  # an exit code chosen by the command
    except AvprepError as e:
        _say(str(e))
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _stopped(again)
    except Exception as e:
        if _while_interrupted(e):  # e.g. an error raised by a cleanup the interrupt started
            _stopped(again)
        known = cmac_error(e)
        if known is not None:
            _say(getattr(known, "cli", None) or last_line(known))  # the CLI's wording, if any
        elif isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
            _say(f"cannot write: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}")
        else:
            raise
        raise typer.Exit(2) from None


def _stopped(again: str) -> NoReturn:
    err.print(f"avprep: interrupted; {again}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130) from None


def _while_interrupted(e: BaseException) -> bool:
    """Whether ``e`` was raised while an interrupt (Ctrl-C, or SIGTERM turned into one) was
    being handled: it is part of the stop, not a failure of its own."""
    seen = set()
    x = e.__context__
    while x is not None and id(x) not in seen:
        if isinstance(x, KeyboardInterrupt):
            return True
        seen.add(id(x))
        x = x.__context__
    return False


def _say(message: str) -> None:
    err.print(f"avprep: error: {message}", markup=False, highlight=False, soft_wrap=True)


def cmac_error(e: BaseException) -> Exception | None:
    """The ``CmacError`` that ``e`` is or was raised from, if any. cmac_core is not imported
    here: where it was never imported, nothing raised one."""
    errors = sys.modules.get("cmac_core.errors")
    if errors is None:
        return None
    return next(
        (x for x in (e, e.__cause__, e.__context__) if isinstance(x, errors.CmacError)), None
    )


def is_rank0() -> bool:
    """Under torchrun only rank 0 talks to the person."""
    return int(os.environ.get("RANK", "0")) == 0


def report_damage(damage) -> int:
    """Rank 0 names the damaged shards and samples that were passed over: 1 if any."""
    if damage and is_rank0():
        for line in damage.lines():
            err.print(f"avprep: {line}", markup=False, highlight=False, soft_wrap=True)
        err.print(f"avprep: {len(damage.samples)} shards with damaged samples ({damage.n_samples} "
                  f"samples skipped), {len(damage.cut_short)} shards read only in part; the rest "
                  "is in the output, a rerun will not find more", markup=False, highlight=False)  # fmt: skip
    return 1 if damage else 0


def last_line(e: Exception) -> str:
    """The message of ``e``. An error raised in a data-loader worker arrives with the
    worker's traceback in its message, whose last line is ``package.module.Error: message``."""
    last = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and head.rsplit(".", 1)[-1] == type(e).__name__ else last


TRAIN_EXTRA = "avprep[train]"


def import_for(command: str, module: str) -> ModuleType:
    """Import ``module`` for ``avprep COMMAND``; a missing package it needs (torch,
    webdataset, ...) is one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if not missing or missing in ("avprep", "cmac_core"):
            raise  # a module of this package: a bug, keep the traceback
        raise AvprepError(
            f"avprep {command} needs {missing}: pip install '{TRAIN_EXTRA}'"
        ) from None
