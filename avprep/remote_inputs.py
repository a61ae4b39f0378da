"""The samples of one remote input (a URL): decoded as it downloads where PyAV decodes it,
from a bounded local spool file where a decoder needs a path.

PyAV (``--decoder auto`` and ``pyav``) reads the object through ``remote.RemoteFile``:
ranged reads of a few MiB, retried, never a whole copy. The ffmpeg CLI and decord need
a path: the object is first copied to one spool file of this worker (under the output's
state folder, or the local staging folder of a remote ``--out``), deleted when the input
is done, and refused (a ``failed`` row) when it would not fit on that disk with
``SPOOL_MARGIN_BYTES`` to spare. So is any object served without byte ranges (then PyAV
cannot seek in it either).

The attempts and their order are those of ``--decoder`` (``Decoder.attempts``), as for
a local file; a remote read that fails for good fails the input with its reason
(``missing: no such object``, ``access denied: ...``, ``remote: ... (after N tries)``)
without trying another decoder.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from avprep import remote
from avprep.config import ShardConfig
from avprep.discover import Input
from avprep.errors import MediaError, SkipInput
from avprep.media.decoder import Decoder

SPOOL_MARGIN_BYTES = 512 * 1024**2  # left free on the spool's disk


def _decoder_for(attempts: tuple[str, ...]) -> str:
    """The ``--decoder`` value whose attempts are ``attempts`` (what is left to try)."""
    for d in Decoder:
        if d.attempts == attempts:
            return d.value
    raise AssertionError(f"no decoder tries {attempts}")


def process_remote(inp: Input, cfg: ShardConfig, writer, logmel, spool_dir: Path, *,
                   threads: int = 1, on_segment=None) -> dict:  # fmt: skip
    """``sample.process_video`` for a URL input; SkipInput or MediaError as there."""
    from avprep.media.container import RemoteReadError  # noqa: PLC0415
    from avprep.sample import process_video  # noqa: PLC0415
    from avprep.tools import has_ffmpeg  # noqa: PLC0415

    try:
        info = remote.stat(inp.path)
    except remote.RemoteFailure as e:
        raise e.media_error() from None
    attempts = Decoder(cfg.decoder).attempts
    if len(attempts) > 1 and attempts[-1] == "ffmpeg" and not has_ffmpeg():
        attempts = attempts[:-1]
    if attempts[0] == "pyav":
        streamed = dataclasses.replace(cfg, decoder="pyav")
        try:
            return process_video(inp, streamed, writer, logmel, threads=threads,
                                 on_segment=on_segment)  # fmt: skip
        except RemoteReadError as e:
            if e.kind != remote.NO_RANGES:
                raise MediaError(e.reason, e.media) from None
            # no byte ranges: PyAV reads it from the spool, then the rest as for a file
        except SkipInput:
            raise
        except MediaError:
            if len(attempts) == 1:
                raise
            attempts = attempts[1:]
    local = _spool(inp, info, spool_dir)
    try:
        spooled = dataclasses.replace(inp, path=str(local))
        rest = dataclasses.replace(cfg, decoder=_decoder_for(attempts))
        return process_video(spooled, rest, writer, logmel, threads=threads,
                             on_segment=on_segment)  # fmt: skip
    finally:
        local.unlink(missing_ok=True)


def _spool(inp: Input, info: dict, spool_dir: Path) -> Path:
    """A local copy of ``inp`` for a decoder that needs a path; MediaError if it cannot
    be made (no room, or the download fails for good)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    size = info.get("size")
    free = shutil.disk_usage(spool_dir).free
    if size is not None and size + SPOOL_MARGIN_BYTES > free:
        raise MediaError(
            f"remote: a decoder needs a local copy of {size} bytes, and {spool_dir} has {free} free"
        )
    name = inp.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    suffix = Path(name).suffix if len(Path(name).suffix) <= 8 else ""
    local = spool_dir / f"{inp.input_key}{suffix}"
    try:
        remote.download(inp.path, str(local), size=size)
    except remote.RemoteFailure as e:
        local.unlink(missing_ok=True)
        raise e.media_error() from None
    except OSError as e:  # the spool's disk
        local.unlink(missing_ok=True)
        raise MediaError(f"remote: cannot spool to {spool_dir}: {e.strerror or e}") from None
    return local
