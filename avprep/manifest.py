"""One manifest row per input: ok, skipped or failed, with a reason.

Rows live in Parquet part files under ``DIR/manifest/``, read together with
``pyarrow.dataset``. ``{shard_stem}.parquet`` holds the ok rows of the videos
in that shard (written right after the shard is renamed into place);
``other-r{rank}-{run}.parquet`` holds a rank run's skipped and failed rows.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from avprep import schema

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
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    # hidden: a kill between write and rename must not leave a file that
    # ds.dataset("DIR/manifest") tries to read (it skips names starting with ".")
    tmp = path.with_name(f".{path.name}{schema.TMP_SUFFIX}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def manifest_dir(out_dir: Path) -> Path:
    return Path(out_dir) / schema.MANIFEST_DIR


def read(out_dir: Path) -> pa.Table:
    """Every committed row under ``out_dir/manifest`` (an empty table if none)."""
    parts = sorted(manifest_dir(out_dir).glob("*.parquet"))
    if not parts:
        return SCHEMA.empty_table()
    return ds.dataset([str(p) for p in parts], schema=SCHEMA, format="parquet").to_table()


def read_part(path: Path) -> pa.Table:
    return pq.read_table(path, schema=SCHEMA)


def rows_from_shard(
    tar_path: Path, *, rank: int, run: int, paths: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Rebuild the ok rows of a committed shard from its samples' json.

    Used on resume when a run was killed between renaming a shard and writing
    its manifest part. ``paths`` (input_key -> real path) fills the path column.
    """
    videos: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.name.endswith("." + schema.JSON):
                continue
            meta = json.loads(tar.extractfile(member).read())
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
