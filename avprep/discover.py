"""Inputs: folders, media files and manifests; the rank/world partition.

Every rank discovers the same full, sorted list and takes its share, so video
ids (made unique across the whole list) and the partition are identical on
every rank without any coordination.
"""

from __future__ import annotations

import csv
import json
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
            if not name.startswith(".") and p.suffix.lower() in MEDIA_EXTS and p.is_file():
                found.append(p)
    return sorted(found)


def _manifest_records(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
                records = list(csv.DictReader(f))
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8-sig") as f:
                records = [json.loads(line) for line in f if line.strip()]
        else:
            import pyarrow.parquet as pq  # noqa: PLC0415

            records = pq.read_table(path).to_pylist()
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read manifest {path}: {e}") from e
    if records and not all(isinstance(r, dict) and r.get("path") for r in records):
        raise UsageError(f"manifest {path} needs a non-empty 'path' column in every row")
    return records


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def discover(inputs: list[str]) -> list[Input]:
    """All inputs in a stable order, with unique safe video ids."""
    raw: list[tuple[str, str, str, str | None, dict]] = []  # source, path, id text, label, extra
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise UsageError(f"input not found: {given}")
        if p.is_dir():
            for f in _walk(p):
                rel = f.relative_to(p).as_posix()
                raw.append((os.path.join(given, rel), str(f), rel, None, {}))
        elif p.suffix.lower() in MANIFEST_EXTS:
            for rec in _manifest_records(p):
                value = str(rec["path"])
                path = value if os.path.isabs(value) else str(p.parent / value)
                id_text = str(rec["id"]) if rec.get("id") not in (None, "") else value
                label = rec.get("label")
                extra = {
                    k: _json_safe(v) for k, v in rec.items() if k not in ("path", "id", "label")
                }
                raw.append((value, path, id_text, None if label is None else str(label), extra))
        else:
            raw.append((given, str(p), p.name, None, {}))

    # The same file named twice (a folder and a file in it) is one input.
    raw = list({(*r[:4], json.dumps(r[4], sort_keys=True)): r for r in raw}.values())
    bases = [schema.safe_id(_strip_media_ext(id_text)) for _, _, id_text, _, _ in raw]
    counts = Counter(bases)
    taken: Counter = Counter()
    out = []
    for (source, path, _, label, extra), base in zip(raw, bases, strict=True):
        vid = base if counts[base] == 1 else f"{base}-{schema.short_hash(source)}"
        taken[vid] += 1
        if taken[vid] > 1:  # one source listed again with other columns (another label)
            vid = f"{vid}-{taken[vid]}"
        out.append(Input(source=source, path=path, video_id=vid, label=label, extra=extra))
    return out


def _strip_media_ext(text: str) -> str:
    root, ext = os.path.splitext(text)
    return root if ext.lower() in MEDIA_EXTS else text


def partition(items: list[Input], rank: int, world_size: int) -> list[Input]:
    """Rank ``rank``'s share: every ``world_size``-th input starting at ``rank``."""
    return items[rank::world_size]


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
