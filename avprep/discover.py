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

URLs (``s3://``, ``https://``, any installed fsspec protocol: ``avprep.remote``) are
inputs too: a folder URL is listed like a folder, a manifest may be a URL and may
hold URLs. Their identity is the URL in the protocol's own spelling, credentials
scrubbed (a re-signed presigned URL is the same input).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avprep import schema
from avprep.errors import UsageError
from avprep.urls import remote_scheme

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
    origin: str = ""  # a remote input's URL as shown (scrubbed); "" for a local file

    @property
    def real_path(self) -> str:
        """What the manifest's ``path`` shows: the real path, or the URL (scrubbed) of a
        remote input (also once ``path`` is a local spooled copy of it)."""
        return self.origin or display(os.path.realpath(self.path))

    @property
    def remote(self) -> bool:
        return bool(self.origin)


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


def _text(data: bytes):
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")  # -sig: Excel's BOM


def _csv_records(path: str, data: bytes) -> list[dict[str, Any]]:
    with _text(data) as f:
        reader = csv.DictReader(f)
        try:
            return list(reader)
        except csv.Error as e:  # a field over csv's 128 KiB limit, a stray quote
            line = reader.line_num + 1  # line_num: the lines read before the one that failed
            raise UsageError(f"cannot read manifest {path}: line {line}: {e}") from e


def _jsonl_records(path: str, data: bytes) -> list[Any]:
    records = []
    with _text(data) as f:
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


def _parquet_records(path: str, data: bytes) -> list[dict[str, Any]]:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    try:
        return pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, ValueError, OverflowError) as e:
        raise UsageError(f"cannot read manifest {path}: {_one_line(e)}") from e


def _manifest_records(path: str) -> list[dict[str, Any]]:
    """The rows of a csv/jsonl/parquet manifest (a path or a URL); UsageError in one line
    for anything else (unreadable, malformed, no usable ``path`` in a row)."""
    read = {".csv": _csv_records, ".jsonl": _jsonl_records}.get(_suffix(path), _parquet_records)
    shown = _shown(path)
    try:
        if remote_scheme(path):
            from avprep import remote  # noqa: PLC0415

            try:
                data = remote.read_bytes(path)
            except remote.RemoteFailure as e:
                raise UsageError(f"cannot read manifest {shown}: {e.reason}") from None
        else:
            data = Path(path).read_bytes()
        records = read(shown, data)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read manifest {shown}: {_one_line(e)}") from e
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


def _suffix(path: str) -> str:
    """The extension of a path or of a URL's path (its query left out)."""
    name = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower()


def _shown(path: str) -> str:
    """A path or URL as messages and the manifest show it (a URL's credentials scrubbed)."""
    if remote_scheme(path):
        from avprep.remote import scrub  # noqa: PLC0415

        return scrub(path)
    return display(path)


def _remote_entries(given: str) -> list[tuple]:
    """The entries of a URL input: a folder URL's media files, a manifest URL's rows, or the
    file itself."""
    from avprep import remote  # noqa: PLC0415

    fs, root = remote.filesystem(given)
    try:
        info = remote.retry(lambda: fs.info(root))
    except remote.RemoteFailure as e:
        if e.kind == remote.MISSING:
            raise UsageError(f"input not found: {remote.scrub(given)}") from None
        raise UsageError(f"cannot read input {remote.scrub(given)}: {e.reason}") from None
    if info.get("type") == "directory" or _html_folder(given, info):
        try:
            found = remote.retry(lambda: fs.find(root))
        except remote.RemoteFailure as e:
            raise UsageError(f"cannot list {remote.scrub(given)}: {e.reason}") from None
        prefix = root.rstrip("/") + "/"
        entries = []
        for name in sorted(found):
            if not name.startswith(prefix):  # an index page's link elsewhere
                continue
            rel = name[len(prefix) :]
            hidden = any(part.startswith(".") for part in rel.split("/"))
            if hidden or not rel or _suffix(rel) not in MEDIA_EXTS:
                continue
            url = remote.join(given, rel)
            entries.append((url, url, rel, None, None, {}))
        return entries
    if _suffix(given) in MANIFEST_EXTS:
        return _manifest_entries(given)
    name = given.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return [(given, given, name, None, None, {})]


def _html_folder(url: str, info: dict) -> bool:
    """Whether an http(s) URL is a folder: its index page (HTTP knows no folders; every
    URL is a file, and fsspec lists a page's links)."""
    if remote_scheme(url) not in ("http", "https"):
        return False
    return url.split("?", 1)[0].endswith("/") or str(info.get("mimetype", "")).startswith(
        "text/html"
    )


def _manifest_entries(manifest: str) -> list[tuple]:
    """(source, path, id text, explicit id, label, extra) of each row of ``manifest``;
    a relative ``path`` is relative to the manifest's folder (or folder URL)."""
    entries = []
    for rec in _manifest_records(manifest):
        value = str(rec["path"])
        if remote_scheme(value) or os.path.isabs(value):
            path = value
        elif remote_scheme(manifest):
            from avprep import remote  # noqa: PLC0415

            path = remote.join(remote.parent(manifest), value)
        else:  # the manifest's ``path`` column shows the file
            path = str(Path(manifest).parent / value)
        explicit = str(rec["id"]) if rec.get("id") not in (None, "") else None
        label = None if rec.get("label") is None else str(rec["label"])
        extra = {k: _json_safe(v) for k, v in rec.items() if k not in ("path", "id", "label")}
        entries.append((value, path, explicit or value, explicit, label, extra))
    return entries


def _identity(path: str) -> tuple[str, str, str]:
    """(identity text, partition text, origin) of the file at ``path`` (or URL)."""
    if remote_scheme(path):
        from avprep import remote  # noqa: PLC0415

        shown = remote.canonical(path)
        return shown, remote.scrub(path), shown
    return os.path.realpath(path), os.path.normpath(path), ""


def discover(inputs: list[str]) -> list[Input]:
    """All inputs in a stable order, each once, with unique safe video ids."""
    raw: dict[str, tuple] = {}  # input_key -> source, path, id text, label, extra, rank_key, origin
    for given in inputs:
        given = str(given)
        if remote_scheme(given):
            entries = _remote_entries(given)
        else:
            p = Path(given)
            if not p.exists():
                raise UsageError(f"input not found: {display(given)}")
            entries = []  # (source, path, id text, explicit id, label, extra)
            if p.is_dir():
                for f in _walk(p):
                    rel = f.relative_to(p).as_posix()
                    entries.append((os.path.join(given, rel), str(f), rel, None, None, {}))
            elif p.suffix.lower() in MANIFEST_EXTS:
                entries = _manifest_entries(given)
            else:
                entries.append((given, str(p), p.name, None, None, {}))
        for source, path, id_text, explicit, label, extra in entries:
            identity, spelled, origin = _identity(path)
            key = _key(identity, explicit, label, extra)
            rank_key = _key(spelled, explicit, label, extra)
            # The same file named twice (a folder and a file in it): one input, the first name.
            raw.setdefault(key, (_shown(source), path, id_text, label, extra, rank_key, origin))

    bases = [schema.safe_id(_strip_media_ext(r[2])) for r in raw.values()]
    counts = Counter(bases)
    taken: Counter = Counter()
    out = []
    for (key, (source, path, _, label, extra, rank_key, origin)), base in zip(
        raw.items(), bases, strict=True
    ):
        vid = base if counts[base] == 1 else f"{base}-{key[:10]}"
        taken[vid] += 1
        if taken[vid] > 1:  # (a 40-bit hash prefix shared: not seen, but never a duplicate id)
            vid = f"{vid}-{taken[vid]}"
        out.append(Input(source, path, vid, label, extra, input_key=key, rank_key=rank_key,
                         origin=origin))  # fmt: skip
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
