"""What a shard directory holds: counts, hours, failures, and a contact sheet.

``stats`` reads the manifest and the shard files' sizes only; ``contact_sheet``
reads just the few samples it draws (chosen from the manifest, spread across
the shards) and hands them to ``avprep.sheet`` to draw.

The directory may be an output URL (``s3://bucket/shards``, any fsspec protocol): the
manifest parts are read whole, the shards listed with their sizes in one listing, and
the contact sheet's samples read from their shards in ranged reads
(``avprep.remote.RemoteFile``), never the whole shard.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from avprep import manifest, read_sample, schema
from avprep.errors import UsageError
from avprep.urls import remote_scheme

STATUSES = (manifest.OK, manifest.SKIPPED, manifest.FAILED)


def _check_out_dir(shard_dir: Path | str) -> Path | str:
    """``shard_dir`` (a Path, or a URL without its trailing ``/``) if it is an avprep output
    directory; UsageError in one line if not."""
    if remote_scheme(str(shard_dir)):
        return _check_out_url(str(shard_dir).rstrip("/"))
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise UsageError(f"{shard_dir} is not a directory")
    if not manifest.manifest_dir(shard_dir).is_dir():
        raise UsageError(
            f"{shard_dir} is not an avprep output directory (no {schema.MANIFEST_DIR}/ folder)"
        )
    return shard_dir


def _check_out_url(url: str) -> str:
    from avprep import remote  # noqa: PLC0415  (fsspec only for URLs)

    fs, path = remote.filesystem(url)
    shown = remote.scrub(url)
    try:
        entries = remote.retry(lambda: fs.ls(path, detail=False))
    except remote.RemoteFailure as e:
        if e.kind == remote.MISSING:
            raise UsageError(f"{shown} is not a directory") from None
        raise UsageError(f"cannot list {shown}: {e.reason}") from None
    if not entries:  # an object store lists a missing prefix as empty
        raise UsageError(f"{shown} is not a directory")
    if schema.MANIFEST_DIR not in {_name(e) for e in entries}:
        raise UsageError(
            f"{shown} is not an avprep output directory (no {schema.MANIFEST_DIR}/ folder)"
        )
    return url


def _name(path: Path | str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def shard_paths(shard_dir: Path | str) -> list[Path] | list[str]:
    """Committed shards (``*.tar``; temporary ``*.tar.tmp`` ones are not counted), sorted:
    Paths, or URLs for an output URL."""
    return list(shard_sizes(shard_dir))


def shard_sizes(shard_dir: Path | str) -> dict:
    """``shard_paths`` -> each one's size in bytes (a URL's from one listing)."""
    if remote_scheme(str(shard_dir)):
        from avprep import remote_read  # noqa: PLC0415

        try:
            return {u: n or 0 for u, n in remote_read.shard_sizes(str(shard_dir)).items()}
        except UsageError as e:
            if str(e).startswith("no "):  # no shards (yet): counted as none
                return {}
            raise
    return {p: p.stat().st_size for p in sorted(Path(shard_dir).glob(f"*{schema.SHARD_SUFFIX}"))}


def shard_pattern(paths: list[Path]) -> str:
    """One string naming exactly ``paths`` for ``webdataset.WebDataset`` (which splits on
    ``::`` and expands braces): shards whose names differ only in their last number, of
    one width and consecutive, become ``prefix{first..last}.tar``; the rest are named as
    they are (braces escaped; a name holding ``::`` cannot be named this way). ``""`` for
    no paths."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    single: list[str] = []
    for p in paths:
        m = _LAST_NUMBER.match(str(p))
        if m is None or "{" in str(p) or "}" in str(p) or "::" in str(p):
            single.append(str(p).replace("{", r"\{").replace("}", r"\}"))  # braceexpand's escape
            continue
        head, digits, tail = m.groups()
        groups.setdefault((head, tail, len(digits)), []).append(int(digits))
    parts = []
    for (head, tail, width), numbers in sorted(groups.items()):
        numbers.sort()
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            if start == prev:
                parts.append(f"{head}{start:0{width}d}{tail}")
            else:
                parts.append(f"{head}{{{start:0{width}d}..{prev:0{width}d}}}{tail}")
            if n is not None:
                start = prev = n
    return "::".join(parts + single)


_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def reason_code(reason: str | None) -> str:
    """The reason's code, the text before its first colon: ``decode_error``, ``too_short``.

    Full reasons also carry paths and tool messages, so they do not group.
    """
    return (reason or "unknown").split(":", 1)[0].strip() or "unknown"


def stats(shard_dir: Path | str) -> dict[str, Any]:
    """Counts of an avprep output directory, as plain data.

    Returns ``shards`` (committed ``*.tar`` files), ``bytes`` (their size on
    disk), ``samples`` (sum of ``n_segments`` over ok inputs), ``inputs``
    (status -> inputs), ``hours`` (sum of ok inputs' ``duration_s`` / 3600: the
    source length, which includes tails too short to become a sample),
    ``reasons`` (status -> {reason code -> inputs}) and ``examples`` (reason
    code -> one full reason). Raises UsageError for a directory without
    ``manifest/``.
    """
    shard_dir = _check_out_dir(shard_dir)
    columns = ["status", "reason", "n_segments", "duration_s"]
    rows = manifest.read(shard_dir).select(columns).to_pylist()
    sizes = shard_sizes(shard_dir)
    tars = list(sizes)
    inputs = Counter({s: 0 for s in STATUSES})
    reasons: dict[str, Counter] = {manifest.SKIPPED: Counter(), manifest.FAILED: Counter()}
    examples: dict[str, str] = {}
    samples, seconds = 0, 0.0
    for row in rows:
        status = row["status"]
        inputs[status] += 1
        if status == manifest.OK:
            samples += row["n_segments"] or 0
            seconds += row["duration_s"] or 0.0
        else:
            code = reason_code(row["reason"])
            reasons.setdefault(status, Counter())[code] += 1
            examples.setdefault(code, row["reason"] or "")
    return {
        "shard_dir": str(shard_dir),
        "shards": len(tars),
        "bytes": sum(sizes.values()),
        "samples": samples,
        "inputs": dict(inputs),
        "hours": seconds / 3600,
        "reasons": {status: dict(sorted(c.items())) for status, c in reasons.items()},
        "examples": examples,
        "pattern": shard_pattern(tars),  # for webdataset.WebDataset(pattern)
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def print_stats(st: dict[str, Any], console: Console) -> None:
    """Print ``stats()`` as a rich table; text from the data is escaped."""
    table = Table(title=f"avprep inspect: {escape(st['shard_dir'])}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("example reason", overflow="fold")
    table.add_row("shards", str(st["shards"]), "")
    table.add_row("size on disk", _size(st["bytes"]), "")
    table.add_row("samples", str(st["samples"]), "")
    table.add_row("hours of ok video", f"{st['hours']:.3f}", "")
    table.add_row("inputs", str(sum(st["inputs"].values())), "")
    for status in STATUSES:
        table.add_row(f"  {status}", str(st["inputs"].get(status, 0)), "")
        for code, n in st["reasons"].get(status, {}).items():
            example = st["examples"].get(code, "")
            table.add_row(escape(f"    {code}"), str(n), escape(example[:200]))
    console.print(table)
    if st.get("pattern"):
        console.print(f"webdataset: WebDataset({escape(repr(st['pattern']))})",
                      soft_wrap=True, highlight=False)  # fmt: skip


# -- samples for the contact sheet ---------------------------------------------


def choose_samples(shard_dir: Path | str, n_samples: int) -> list[tuple[Path | str, str]]:
    """Up to ``n_samples`` ``(shard path, key)`` pairs spread evenly over the shards.

    Keys come from the manifest's ok rows (video id x segment), so no tar is
    scanned to choose. Sample ``i`` goes to shard ``floor((i + 0.5) * S / n)``;
    inside a shard the picks are spread evenly over its samples ordered by
    ``(video_id, segment)``.
    """
    columns = ["status", "video_id", "n_segments", "shards"]
    videos: dict[str, list[tuple[str, int]]] = {}
    for row in manifest.read(shard_dir).select(columns).to_pylist():
        ok = row["status"] == manifest.OK and row["shards"] and row["n_segments"]
        if ok and schema.is_key(f"{row['video_id']}_0000"):  # a stranger's manifest: ids checked
            videos.setdefault(row["shards"][0], []).append((row["video_id"], row["n_segments"]))
    present = [p for p in shard_paths(shard_dir) if _name(p) in videos]
    if not present or n_samples <= 0:
        return []
    picks = Counter(int((i + 0.5) * len(present) / n_samples) for i in range(n_samples))
    chosen: list[tuple[Path | str, str]] = []
    for index, m in sorted(picks.items()):
        shard_videos = sorted(videos[_name(present[index])])
        ends = np.cumsum([n for _, n in shard_videos])  # samples up to and including each video
        for k in sorted({int((r + 0.5) * ends[-1] / m) for r in range(m)}):
            v = int(np.searchsorted(ends, k, side="right"))
            segment = k - (int(ends[v - 1]) if v else 0)
            chosen.append((present[index], schema.make_key(shard_videos[v][0], segment)))
    return chosen


def read_samples(
    pairs: list[tuple[Path | str, str]], problems: list[str] | None = None
) -> list[dict[str, Any]]:
    """Read the chosen samples: ``{"json": dict, "frames": [jpeg bytes] in order, "spec": array}``
    (``json`` as ``schema.check_sample`` gives it, in either schema version).

    ``spec`` is the float16 ``[n_mels, n_columns]`` log-mel. Each tar is read once, up to
    the last wanted sample; a key that is not in its shard is left out, and so is a sample
    that breaks the shard format (``schema.check_sample``), with a line in ``problems``.
    """
    by_shard: dict[Path | str, set[str]] = {}
    for path, key in pairs:
        by_shard.setdefault(path, set()).add(key)
    raw: dict[str, dict[str, bytes]] = {}
    for path, wanted in by_shard.items():
        left = set(wanted)
        try:
            with _open_tar(path) as tar:
                for member in tar:
                    key, _, suffix = member.name.partition(".")
                    if key not in wanted:
                        if not left:
                            break
                        continue
                    left.discard(key)
                    problem = schema.member_problem(member)
                    if problem is not None:
                        raise tarfile.ReadError(problem)
                    if member.isreg() and schema.is_sample_member(suffix):
                        raw.setdefault(key, {})[suffix] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as e:
            if problems is not None:
                problems.append(
                    f"shard {path} could not be read to its end: {type(e).__name__}: {e}"
                )
    out = []
    for path, key in pairs:
        if key not in raw:
            continue
        try:
            out.append(_checked(key, raw[key]))
        except schema.SampleError as e:
            if problems is not None:
                problems.append(f"shard {path}: {e}")
    return out


@contextlib.contextmanager
def _open_tar(path: Path | str):
    """A shard for reading: a local file, or a URL read in ranges as tarfile seeks (OSError
    when its reads fail for good, as a local file's would)."""
    if not remote_scheme(str(path)):
        with tarfile.open(path) as tar:
            yield tar
        return
    from avprep import remote  # noqa: PLC0415

    try:
        f = remote.RemoteFile(str(path))
    except remote.RemoteFailure as e:
        raise OSError(e.reason) from None
    try:
        with tarfile.open(fileobj=f) as tar:
            yield tar
        if f.failure is not None:  # a RemoteFile reads as ended once its retries are spent
            raise OSError(f.failure.reason)
    finally:
        f.close()


def _checked(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    """One sample's members (either schema version), checked against the shard format, as
    ``read_samples`` gives it."""
    meta = read_sample.sample_meta({"__key__": key, **members})
    frames = read_sample.frame_jpegs(members, meta)
    spec = read_sample.spec_array(members, meta)
    for data in frames:
        try:
            simplejpeg.decode_jpeg(data, colorspace="RGB")
        except ValueError as e:
            raise schema.SampleError(f"sample {key}: a frame does not decode ({e})") from e
    return {"json": meta, "frames": frames, "spec": spec}


def contact_sheet(
    shard_dir: Path | str, png_path: Path, *, n_samples: int = 4, problems: list[str] | None = None
) -> Path:
    """Write a PNG of ``n_samples`` samples: frames and log-mel on one time axis per sample.

    Returns ``png_path``; damaged samples are left out, with a line in ``problems``.
    Raises UsageError if the directory has no samples or the PNG cannot be written.
    """
    from avprep.sheet import draw_sheet  # noqa: PLC0415  (Pillow only when drawing)

    shard_dir = _check_out_dir(shard_dir)
    if n_samples < 1:
        raise UsageError(f"--samples must be at least 1, got {n_samples}")
    samples = read_samples(choose_samples(shard_dir, n_samples), problems)
    if not samples:
        raise UsageError(f"{shard_dir} holds no samples to draw")
    title = (
        f"{shard_dir}: {len(samples)} samples; frames at their presentation times, "
        "log-mel columns at their window centres"
    )
    image = draw_sheet(samples, title=title)
    png_path = Path(png_path)
    try:
        image.save(png_path, format="PNG", optimize=True)
    except OSError as e:
        raise UsageError(f"cannot write {png_path}: {e.strerror or e}") from e
    return png_path
