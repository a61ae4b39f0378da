"""What the command line accepts before any heavy import: fixed choices, devices, sizes
with units, and local paths; and the options several commands share (SHARDS, --device, --ckpt).

Each is checked while arguments are parsed, so a wrong value is one line (naming what
is allowed), exit 2, before torch, PyAV or pyarrow is imported and before anything is
written. The choices repeat names the libraries define (``avprep.spectrogram.PRESETS``
needs numpy, ``cmac_core`` torch); tests/test_arguments.py keeps the two equal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import typer

from avprep.units import parse_size
from avprep.urls import refusal

SPEC_PRESETS = ("logmel128", "vggish64")  # avprep.spectrogram.PRESETS
METHODS = ("cmac", "avid", "lla")  # cmac_core.config.METHODS
EVALUATE_SIZES = ("auto", "tiny", "base")  # cmac_core.evaluate.config.PRESETS
ARMS = (
    "random_init",
    "avid",
    "cmac",
    "cmac_no_within",
    "cmac_momentum",
    "cmac_sharp",
    "shuffled_audio",
    "lla",
)  # evaluate.arms
DEVICE_METAVAR = "[auto|cpu|cuda|cuda:N]"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def choice_option(default: str | None, names: tuple[str, ...], *, help: str):  # noqa: A002
    """A ``typer.Option`` taking one of ``names``: listed in ``--help``, offered by shell
    completion, anything else refused in one line that names them."""
    return typer.Option(default, parser=_one_of(names), metavar="[" + "|".join(names) + "]",
                        autocompletion=lambda: list(names), help=help)  # fmt: skip


def _one_of(names: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise typer.BadParameter(f"{text!r} is not one of {', '.join(names)}")
        return text

    return parse


def device(text: str) -> str:
    """``--device``: auto (CUDA when present), cpu, cuda or cuda:N."""
    if not _DEVICE.fullmatch(text):
        raise typer.BadParameter(f"{text!r} is not one of auto, cpu, cuda, cuda:N")
    return text


def arms(text: str) -> str:
    """``--arms``: comma-separated names from ``ARMS`` (empty: the protocol's default)."""
    unknown = [a for a in text.split(",") if a and a not in ARMS]
    if unknown:
        raise typer.BadParameter(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    return text


def size(text: str | int) -> int:
    """Bytes, with units: ``1000000``, ``256M``, ``1.5GiB`` (see ``avprep.units``)."""
    if isinstance(text, int):  # a default given as a number
        return text
    try:
        return parse_size(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def local_path(text: str | Path) -> Path:
    """A path on this machine. A URL is refused: remote storage is not written or read
    here yet (pathlib would make ``s3://b/x`` the local folder ``s3:/b/x``)."""
    if isinstance(text, Path):  # a default
        return text
    message = refusal(text)
    if message is not None:
        raise typer.BadParameter(message)
    return Path(text)


def shards_argument():
    """The SHARDS argument of pretrain, embed and localize."""
    return typer.Argument(
        ...,
        help="Shard directory, glob, brace pattern or URL(s) joined by '::'.",
        show_default=False,
    )


def device_option():
    """``--device``, checked by ``device``."""
    return typer.Option(
        "auto",
        parser=device,
        metavar=DEVICE_METAVAR,
        help="auto (CUDA when present), cpu, cuda or cuda:N.",
    )


def ckpt_option():
    """``--ckpt``: a local checkpoint file."""
    return typer.Option(
        ..., "--ckpt", parser=local_path, help="A checkpoint written by avprep pretrain."
    )
