"""Inputs: folders, media files and manifests; the rank/world partition.

Every rank discovers the same full, sorted list, so video ids (made unique
across the whole list) are identical on every rank without any coordination.
Two hashes of an input, each over its path and what the user attached to it
(a manifest's id, label and extra columns):

- ``input_key``, with the real path (symlinks resolved): its identity. The same
  file named twice is one input, and resume recognises a committed input by it
  however the command spells its path.
- ``rank_key``, with the path as the command spells it: the rank partition.
  Every rank hashes the same strings (whatever the mount points of its node),
  and adding files to a folder never moves an input to another rank.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avprep import schema
from avprep.errors import UsageError

VIDEO_EXTS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".wmv", ".mpg", ".mpeg",
    ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".vob", ".mxf", ".asf", ".divx", ".f4v",
}  # fmt: skip
AUDIO_EXTS = {".wav", ".mp3", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".wma"}
MEDIA_EXTS = VIDEO_EXTS | AUDIO_EXTS
MANIFEST_EXTS = {".csv", ".jsonl", ".parquet"}


@dataclass(frozen=True)
class Input:
    """One input: where to open it, how to name it, what to carry along."""

    source: str  # the path as the user gave it (folder + relative path, or manifest value)
    path: str  # the path to open
    video_id: str
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    input_key: str = ""  # identity: duplicates and resume (real path)
    rank_key: str = ""  # the rank partition (path as given)

    @property
    def real_path(self) -> str:
        return display(os.path.realpath(self.path))


def display(text: str) -> str:
    """A path as printable UTF-8: bytes of a name in another encoding as ``\\xff``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _key(path: str, explicit_id: str | None, label: str | None, extra: dict) -> str:
    text = json.dumps([path, explicit_id, label, extra], sort_keys=True, ensure_ascii=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]  # ascii above: names in any encoding


def _walk(folder: Path) -> list[Path]:
    """Media files under ``folder``; symlinked folders followed once; hidden names skipped."""
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            p = Path(root) / name
            # a dangling symlink is kept: it is recorded as failed (missing), not ignored
            if not name.startswith(".") and p.suffix.lower() in MEDIA_EXTS and not p.is_dir():
                found.append(p)
    return sorted(found)


def _one_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _strict_text(value: Any) -> bool:
    """No lone surrogate (JSON's ``"\\ud800"``) anywhere in ``value``: it is no text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_strict_text(k) and _strict_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_strict_text(v) for v in value)
    return True


def _csv_records(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
        reader = csv.DictReader(f)
        try:
            return list(reader)
        except csv.Error as e:  # a field over csv's 128 KiB limit, a stray quote
            line = reader.line_num + 1  # line_num: the lines read before the one that failed
            raise UsageError(f"cannot read manifest {path}: line {line}: {e}") from e


def _jsonl_records(path: Path) -> list[Any]:
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except RecursionError as e:
                raise UsageError(f"cannot read manifest {path}: line {n}: nested too deeply") from e
            except ValueError as e:
                raise UsageError(f"cannot read manifest {path}: line {n}: {e}") from e
            if not _strict_text(record):
                raise UsageError(f"cannot read manifest {path}: line {n}: a lone surrogate escape")
            records.append(record)
    return records


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, ValueError, OverflowError) as e:
        raise UsageError(f"cannot read manifest {path}: {_one_line(e)}") from e


def _manifest_records(path: Path) -> list[dict[str, Any]]:
    """The rows of a csv/jsonl/parquet manifest; UsageError in one line for anything else
    (unreadable, malformed, no usable ``path`` in a row)."""
    read = {".csv": _csv_records, ".jsonl": _jsonl_records}.get(
        path.suffix.lower(), _parquet_records
    )
    try:
        records = read(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read manifest {path}: {_one_line(e)}") from e
    for n, r in enumerate(records, 1):
        if not (isinstance(r, dict) and r.get("path")):
            raise UsageError(f"manifest {path} needs a non-empty 'path' column in every row")
        if "\0" in str(r["path"]):
            raise UsageError(f"manifest {path}: row {n}: the path holds a NUL character")
    return records


def _json_safe(value: Any) -> Any:
    """Strict JSON: NaN and infinities (pandas' missing values) become null; unknown
    types their text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return str(value)


def discover(inputs: list[str]) -> list[Input]:
    """All inputs in a stable order, each once, with unique safe video ids."""
    raw: dict[str, tuple] = {}  # input_key -> source, path, id text, label, extra, rank_key
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise UsageError(f"input not found: {display(given)}")
        entries = []  # (source, path, id text, explicit id, label, extra)
        if p.is_dir():
            for f in _walk(p):
                rel = f.relative_to(p).as_posix()
                entries.append((os.path.join(given, rel), str(f), rel, None, None, {}))
        elif p.suffix.lower() in MANIFEST_EXTS:
            for rec in _manifest_records(p):
                value = str(rec["path"])
                # relative to the manifest's folder; the manifest's ``path`` column shows the file
                path = value if os.path.isabs(value) else str(p.parent / value)
                explicit = str(rec["id"]) if rec.get("id") not in (None, "") else None
                label = None if rec.get("label") is None else str(rec["label"])
                extra = {
                    k: _json_safe(v) for k, v in rec.items() if k not in ("path", "id", "label")
                }
                entries.append((value, path, explicit or value, explicit, label, extra))
        else:
            entries.append((given, str(p), p.name, None, None, {}))
        for source, path, id_text, explicit, label, extra in entries:
            key = _key(os.path.realpath(path), explicit, label, extra)
            rank_key = _key(os.path.normpath(path), explicit, label, extra)
            # The same file named twice (a folder and a file in it): one input, the first name.
            raw.setdefault(key, (display(source), path, id_text, label, extra, rank_key))

    bases = [schema.safe_id(_strip_media_ext(r[2])) for r in raw.values()]
    counts = Counter(bases)
    taken: Counter = Counter()
    out = []
    for (key, (source, path, _, label, extra, rank_key)), base in zip(
        raw.items(), bases, strict=True
    ):
        vid = base if counts[base] == 1 else f"{base}-{key[:10]}"
        taken[vid] += 1
        if taken[vid] > 1:  # (a 40-bit hash prefix shared: not seen, but never a duplicate id)
            vid = f"{vid}-{taken[vid]}"
        out.append(Input(source, path, vid, label, extra, input_key=key, rank_key=rank_key))
    return out


def keep_committed_ids(items: list[Input], committed: dict[str, str]) -> list[Input]:
    """Inputs with the video ids an earlier run committed them under (``input_key`` ->
    ``video_id``); a new input whose id an earlier input holds gets its key appended.

    Ids depend on the whole input list (collisions get a hash), so a file added
    to a folder can change the id another input would get now; resume must not
    shard that input again under its new id, nor skip the new one.
    """
    held = set(committed.values())
    out = []
    for inp in items:
        if inp.input_key in committed:
            inp = dataclasses.replace(inp, video_id=committed[inp.input_key])
        elif inp.video_id in held:
            inp = dataclasses.replace(inp, video_id=f"{inp.video_id}-{inp.input_key[:10]}")
        out.append(inp)
    return out


def _strip_media_ext(text: str) -> str:
    root, ext = os.path.splitext(text)
    return root if ext.lower() in MEDIA_EXTS else text


def partition(items: list[Input], rank: int, world_size: int) -> list[Input]:
    """Rank ``rank``'s share: the inputs whose ``rank_key`` hashes to it.

    A hash, not every W-th input, so adding inputs never moves one from a rank
    to another (their rows, ok or failed, stay with the rank that owns them).
    """
    return [inp for inp in items if int(inp.rank_key, 16) % world_size == rank]


def rank_world_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """(rank, world_size) from torchrun or Slurm variables; (0, 1) outside both.

    torchrun's RANK/WORLD_SIZE win. Under Slurm, an array task and the task
    within a step combine: rank = array_index * ntasks + procid.
    """
    env = dict(os.environ if env is None else env)

    def num(name: str, default: str = "0") -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            raise UsageError(f"{name}={env[name]!r} is not an integer") from None

    if "RANK" in env and "WORLD_SIZE" in env:
        return num("RANK"), num("WORLD_SIZE")
    rank, world = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        step = max(num("SLURM_ARRAY_TASK_STEP", "1"), 1)  # --array=1-7:2 runs 1, 3, 5, 7
        rank = (num("SLURM_ARRAY_TASK_ID") - num("SLURM_ARRAY_TASK_MIN")) // step
        world = num("SLURM_ARRAY_TASK_COUNT")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        ntasks = num("SLURM_NTASKS")
        rank, world = rank * ntasks + num("SLURM_PROCID"), world * ntasks
    return rank, world
