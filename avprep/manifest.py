"""One manifest row per input: ok, skipped or failed, with a reason.

Rows live in Parquet part files under ``DIR/manifest/``, read together with
``pyarrow.dataset``. ``{shard_stem}.parquet`` holds the ok rows of the videos
in that shard (written right after the shard is renamed into place);
``other-r{rank}-{run}.parquet`` holds a rank run's skipped and failed rows.

A part is checked where it is read: one that is not Parquet, has another
schema, or holds rows no avprep run writes raises ``DamagedPart`` naming the
file (``OutputDir.recover_orphans`` rebuilds a damaged shard part from its tar).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from avprep import schema
from avprep.errors import UsageError
from avprep.urls import remote_scheme

OK, SKIPPED, FAILED = "ok", "skipped", "failed"

MEDIA_COLUMNS = (
    ("container", pa.string()),
    ("video_codec", pa.string()),
    ("video_stream", pa.int32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("rotation_deg", pa.int32()),
    ("source_fps", pa.float64()),
    ("video_start_s", pa.float64()),
    ("audio_codec", pa.string()),
    ("audio_stream", pa.int32()),
    ("audio_channels", pa.int32()),
    ("audio_rate_hz", pa.int32()),
    ("audio_start_s", pa.float64()),
    ("n_video_streams", pa.int32()),
    ("n_audio_streams", pa.int32()),
    ("decoder", pa.string()),
)

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("path", pa.string()),  # the file opened, real path (null in rows rebuilt from a shard)
        ("input_key", pa.string()),  # the input's identity (discover.input_key)
        ("video_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("n_segments", pa.int32()),
        ("shards", pa.list_(pa.string())),
        ("duration_s", pa.float64()),
        ("label", pa.string()),
        ("extra_json", pa.string()),
        *MEDIA_COLUMNS,
        ("rank", pa.int32()),
        ("run", pa.int32()),
        ("seconds", pa.float64()),
    ],
    metadata={"avprep_schema_version": str(schema.SCHEMA_VERSION)},
)


def make_row(**fields: Any) -> dict[str, Any]:
    """A row with every column present (missing ones null)."""
    row = {name: None for name in SCHEMA.names}
    media = fields.pop("media", None) or {}
    row.update({k: v for k, v in media.items() if k in row})
    row.update(fields)
    unknown = set(row) - set(SCHEMA.names)
    if unknown:
        raise KeyError(f"unknown manifest columns {sorted(unknown)}")
    return row


def write_part(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically (temporary name, then rename)."""
    # hidden: a kill between write and rename must not leave a file that
    # ds.dataset("DIR/manifest") tries to read (it skips names starting with ".")
    tmp = path.with_name(f".{path.name}{schema.TMP_SUFFIX}")
    write_table(tmp, rows)
    os.replace(tmp, path)


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as a Parquet file at ``path`` (no rename: ``write_part`` and remote stores
    make it appear whole)."""
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, compression="zstd")


def manifest_dir(out_dir: Path) -> Path:
    return Path(out_dir) / schema.MANIFEST_DIR


class DamagedPart(UsageError):
    """A manifest part that no avprep run wrote as it is; ``path`` names it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"damaged manifest part {path}: {why}")
        self.path, self.why = Path(path), why


REQUIRED = ("source", "input_key", "video_id", "status", "shards", "rank", "run")


def _first_line(e: Exception) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^Could not open Parquet input source '.*?': ", "", line)[:200]


def _damage(table: pa.Table, shard: str | None) -> str | None:
    """Why ``table`` cannot be a part avprep wrote (None if it can); ``shard``: the tar
    name every row of a shard's part holds."""
    if not table.schema.equals(SCHEMA, check_metadata=False):
        return "another schema than avprep's manifest"
    nulls = [name for name in REQUIRED if table.column(name).null_count]
    if nulls:
        return f"empty {', '.join(nulls)}"
    if set(table.column("status").to_pylist()) - {OK, SKIPPED, FAILED}:
        return "a status other than ok, skipped or failed"
    if shard is not None and any(s != [shard] for s in table.column("shards").to_pylist()):
        return f"rows of another shard than {shard}"
    return None


def _twice(table: pa.Table) -> bool:
    keys = table.column("input_key")
    return len(keys) != len(pc.unique(keys))


def read_part(path: Path, data: bytes | None = None) -> pa.Table:
    """One part, checked; DamagedPart if it is not one avprep wrote (a shard's part,
    ``{stem}.parquet``, must hold rows of ``{stem}.tar`` only). ``data``: the part's
    bytes, read elsewhere (from a remote store), ``path`` then only names it."""
    name = Path(str(path).rsplit("/", 1)[-1])
    shard = f"{name.stem}{schema.SHARD_SUFFIX}" if schema.parse_shard_stem(name.stem) else None
    try:
        table = pq.read_table(Path(path) if data is None else pa.BufferReader(data))
    except (OSError, pa.ArrowException) as e:
        raise DamagedPart(path, f"not readable as Parquet ({_first_line(e)})") from e
    why = _damage(table, shard)
    if why:
        raise DamagedPart(path, why)
    return table


# The fewest bytes a sample takes in a shard: its json, frames and spectrogram members
# (schema: v1 and v2), each at least a tar header.
MIN_SAMPLE_BYTES = 3 * schema.TAR_BLOCK


def part_samples(table: pa.Table, path: Path | str, *, shard_bytes: int) -> int:
    """The samples a shard's part (``read_part``) says its shard holds, summed over its
    rows; DamagedPart where a row's count is negative or the sum is more than a shard of
    ``shard_bytes`` can hold (``MIN_SAMPLE_BYTES`` a sample): a count is never trusted
    past what the tar can physically hold, so no reader plans for more."""
    counts = [n or 0 for n in table.column("n_segments").to_pylist()]
    if any(n < 0 for n in counts):
        raise DamagedPart(path, f"a negative n_segments ({min(counts)})")
    total, most = sum(counts), max(0, shard_bytes) // MIN_SAMPLE_BYTES
    if total > most:
        raise DamagedPart(path, f"n_segments sum to {total} samples, more than its "
                                f"{shard_bytes}-byte shard can hold (at most {most})")  # fmt: skip
    return total


def repair_hint(name: str) -> str:
    """How a damaged part named ``name`` (``{stem}.parquet``) gets repaired."""
    if schema.parse_shard_stem(name.rsplit("/", 1)[-1].removesuffix(".parquet")):
        return "the next run of its rank rebuilds it from its shard"
    return "delete it, and its rank's next run tries those inputs again"


def check_together(table: pa.Table) -> bool:
    """Whether rows read together look as avprep writes them (no damage, no input twice)."""
    return not (_damage(table, None) or _twice(table))


def empty() -> pa.Table:
    """No rows, in ``SCHEMA`` (``SCHEMA.empty_table()`` has pyarrow import pandas: 0.3 s)."""
    return pa.Table.from_batches([], schema=SCHEMA)


def conformed(table: pa.Table) -> pa.Table:
    """A part's rows in ``SCHEMA``'s columns, order and types, as ``pyarrow.dataset`` reads
    parts with an explicit schema (a column an older part lacks is null, one ``SCHEMA``
    lacks is left out; a type that does not cast raises), without importing it and pandas
    (0.3 s of a shard command's start and end)."""
    names = set(table.column_names)
    return pa.Table.from_arrays(
        [
            table.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(table), f.type)
            for f in SCHEMA
        ],
        schema=SCHEMA,
    )


def read(out_dir: Path | str) -> pa.Table:
    """Every committed row under ``out_dir/manifest`` (an empty table if none); ``out_dir``
    may be a URL (``avprep.remote_store``).

    DamagedPart names the first part that is not one avprep wrote (each part is
    checked on its own only when the rows read together show damage: an input
    twice counts)."""
    if remote_scheme(str(out_dir)):
        from avprep.remote_store import RemoteStore  # noqa: PLC0415

        return RemoteStore(str(out_dir)).read_manifest()
    parts = sorted(manifest_dir(out_dir).glob("*.parquet"))
    if not parts:
        return empty()
    try:
        table = pa.concat_tables([conformed(pq.ParquetFile(p).read()) for p in parts])
    except (OSError, pa.ArrowException):
        table = None
    if table is None or _damage(table, None) or _twice(table):
        for part in parts:
            try:
                read_part(part)
            except DamagedPart as e:
                raise DamagedPart(part, f"{e.why}; {repair_hint(part.name)}") from None
        if table is None:  # every part reads alone but not together: not seen
            raise UsageError(f"cannot read the manifest parts under {manifest_dir(out_dir)}")
    return table


def rows_from_shard(
    tar_path: Path, *, rank: int, run: int, paths: dict[str, str] | None = None, fileobj=None
) -> list[dict[str, Any]]:
    """Rebuild the ok rows of a committed shard from its samples' json.

    Used on resume when a run was killed between renaming a shard and writing
    its manifest part. ``paths`` (input_key -> real path) fills the path column.
    ``fileobj``: the tar opened elsewhere (a remote shard); ``tar_path`` then names it.
    """
    videos: dict[str, dict[str, Any]] = {}
    tar_path = Path(str(tar_path).rsplit("/", 1)[-1]) if fileobj is not None else Path(tar_path)
    with tarfile.open(tar_path if fileobj is None else None, fileobj=fileobj) as tar:
        for member in tar:
            if not member.name.endswith("." + schema.JSON):
                continue
            problem = schema.member_problem(member)
            if problem is not None:
                raise tarfile.ReadError(problem)
            meta = schema.readers_meta(json.loads(tar.extractfile(member).read()))  # v1 or v2
            vid = meta["video_id"]
            if vid not in videos:
                media = dict(meta.get("media") or {})
                key = meta.get("input_key")
                videos[vid] = make_row(
                    source=meta["source"],
                    path=(paths or {}).get(key),
                    input_key=key,
                    video_id=vid,
                    status=OK,
                    n_segments=0,
                    shards=[tar_path.name],
                    duration_s=media.pop("duration_s", None),
                    label=meta.get("label"),
                    extra_json=json.dumps(meta.get("extra") or {}),
                    media=media,
                    rank=rank,
                    run=run,
                )
            videos[vid]["n_segments"] += 1
    return list(videos.values())
