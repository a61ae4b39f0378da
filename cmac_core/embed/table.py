"""The embedding table: ``EMB_DIR/part-{rank:05d}-{n:05d}.parquet`` and the per-video table.

Parts are zstd Parquet with an explicit schema and the model recorded in the file
metadata, written under a temporary name (beside ``EMB_DIR``, see ``folder``) and renamed
into it, or at a URL uploaded whole under their final names (``remote_table``), so pyarrow,
pandas, polars, DuckDB and ``datasets`` read ``EMB_DIR`` as one table of committed rows,
keyed by sample key. The functions here take the table's place (``folder.place_of``) and
read and write it by part name.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cmac_core import checkpoint
from cmac_core.errors import CmacError

ROWS_PER_PART = 2048
PART_EVERY_S = 300.0  # also commit a part this often: a kill loses at most minutes of work


class EmbedError(CmacError):
    """One-line problems with the output directory."""


# 2: video_feature and audio_feature (pooled backbone features) beside the embeddings
TABLE_VERSION = "2"
VECTORS = ("video_embedding", "audio_embedding", "video_feature", "audio_feature")
UNIT = ("video_embedding", "audio_embedding")  # L2-normalised; features are not


def table_schema(dim: int, feature_dim: int, metadata: dict[str, str]) -> pa.Schema:
    """Segment rows: embeddings ``[dim]`` (L2-normalised projection-head outputs, for
    retrieval) and features ``[feature_dim]`` (pooled backbone features before the heads,
    what linear probes take), each the mean over the segment's clip windows."""
    return pa.schema(
        [
            ("key", pa.string()),
            ("video_id", pa.string()),
            ("segment", pa.int32()),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("label", pa.string()),
            ("video_embedding", pa.list_(pa.float32(), dim)),
            ("audio_embedding", pa.list_(pa.float32(), dim)),
            ("video_feature", pa.list_(pa.float32(), feature_dim)),
            ("audio_feature", pa.list_(pa.float32(), feature_dim)),
        ],
        metadata={**metadata, "table_version": TABLE_VERSION},
    )


def committed_keys(place) -> list[str]:
    """The keys of every committed part of the table ``place`` (``folder.place_of``; a path
    or URL is taken as its place), a key twice only in a table of an older version."""
    place = _place(place)
    parts = place.parts()
    if not parts:
        return []
    return place.read(parts, columns=["key"]).column(0).to_pylist()


def _place(place):
    if isinstance(place, str | Path):
        from cmac_core.embed.folder import place_of  # noqa: PLC0415  (folder imports this)

        return place_of(place)
    return place


def check_same_table(place, metadata: dict[str, str]) -> None:
    """One table, one checkpoint and one clip placement: a rerun must match the parts there."""
    parts = place.parts()
    if not parts:
        return
    out_dir = place.shown
    raw = place.read_schema(parts[0]).metadata or {}
    have = {k.decode(): v.decode() for k, v in raw.items()}
    sha = have.get("checkpoint_sha256", "")
    if sha != metadata["checkpoint_sha256"]:
        held = f"{out_dir} holds embeddings of another checkpoint (sha256 {sha[:12]}...)"
        raise EmbedError(f"{held}: use another out_dir", cli=f"{held}: use another --out")
    if have.get("table_version") != TABLE_VERSION:
        held = (f"{out_dir} holds a table of another version ({have.get('table_version', '1')}, "
                f"this avprep writes {TABLE_VERSION}: features beside embeddings)")  # fmt: skip
        raise EmbedError(f"{held}: use another out_dir", cli=f"{held}: use another --out")
    if have.get("clips_per_segment") != metadata["clips_per_segment"]:
        was, now = have.get("clips_per_segment"), metadata["clips_per_segment"]
        raise EmbedError(
            f"{out_dir} holds embeddings made with clips_per_segment {was}, not {now}: use another out_dir",
            cli=f"{out_dir} holds embeddings made with --clips-per-segment {was}, not {now}: use another --out",
        )


class PartWriter:
    """Buffers rows; writes ``part-{rank}-{n}.parquet`` into the table ``place`` (opened),
    whole or not at all, every ``rows_per_part`` rows."""

    def __init__(self, place, rank: int, schema_: pa.Schema,
                 rows_per_part: int = ROWS_PER_PART) -> None:  # fmt: skip
        self.place, self.rank, self.schema = place, rank, schema_
        self.rows_per_part = rows_per_part
        taken = [int(name.split(".")[0].split("-")[2]) for name in place.parts(rank)]
        self.next = max(taken, default=-1) + 1
        self.rows: list[dict] = []
        self.written = 0
        self.since = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part or time.monotonic() - self.since > PART_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"part-{self.rank:05d}-{self.next:05d}.parquet"
        self.place.write(pa.Table.from_pylist(self.rows, schema=self.schema), name)
        self.next += 1
        self.written += len(self.rows)
        self.rows = []
        self.since = time.monotonic()


def write_atomically(table: pa.Table, final: Path, tmp_dir: Path) -> None:
    """``table`` to ``final`` through a hidden temporary name in ``tmp_dir`` (on the mount of
    ``final``): a full disk or a read-only folder leaves nothing under the final name, and no
    temporary file (EmbedError)."""
    tmp = tmp_dir / f".{final.name}.tmp"
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, final)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EmbedError(f"cannot write to {final.parent}: {os_why(e)}") from e


def os_why(e: OSError) -> str:
    """The system's words for ``e`` (pyarrow's OSError has no errno, only "[errno 28]")."""
    found = re.search(r"\[errno (\d+)\]", str(e))
    if found:
        return os.strerror(int(found.group(1)))
    return e.strerror or checkpoint.first_line(str(e)) or type(e).__name__


def write_per_video(place, metadata: dict[str, str], *,
                    leave_out_keys: set[str] = frozenset()) -> Path | str:  # fmt: skip
    """The per-video table of the table ``place``'s parts, written beside it (not inside
    it: it is another table; ``place.write_per_video``): one row per video, the mean of its
    segments (embeddings renormalised, features as they are). Returns where it went.

    The videos of ``leave_out_keys`` (keys met more than once: their video ids may name two
    videos) get no row: a row must never mix two videos."""
    table = place.read(place.parts())
    ids = table.column("video_id").to_pylist()
    unsure = {vid for key, vid in zip(table.column("key").to_pylist(), ids, strict=True)
              if key in leave_out_keys}  # fmt: skip
    groups: dict[str, list[int]] = {}
    for i, vid in enumerate(ids):
        if vid not in unsure:
            groups.setdefault(vid, []).append(i)
    columns = {name: np.asarray(table.column(name).to_pylist(), np.float32) for name in VECTORS}
    labels = table.column("label").to_pylist()
    starts, ends = table.column("start_s").to_pylist(), table.column("end_s").to_pylist()
    rows = []
    for vid in sorted(groups):
        idx = groups[vid]
        row = {"video_id": vid, "n_segments": len(idx), "start_s": min(starts[i] for i in idx),
               "end_s": max(ends[i] for i in idx), "label": labels[idx[0]]}  # fmt: skip
        for name, values in columns.items():
            mean = values[idx].mean(0)
            row[name] = mean / max(np.linalg.norm(mean), 1e-12) if name in UNIT else mean
        rows.append(row)
    schema_ = pa.schema(
        [("video_id", pa.string()), ("n_segments", pa.int32()), ("start_s", pa.float64()),
         ("end_s", pa.float64()), ("label", pa.string()),
         *((name, table.schema.field(name).type) for name in VECTORS)],
        metadata={**metadata, "table_version": TABLE_VERSION},
    )  # fmt: skip
    return place.write_per_video(pa.Table.from_pylist(rows, schema=schema_))


def keep_first_rows(place) -> int:
    """Make every key appear once in the table ``place``: a key in more than one part keeps
    its row in the first part (by name: the lowest rank's), and later parts are rewritten
    without it (whole or not at all; a part left empty is removed). The number of rows
    removed."""
    seen: set[str] = set()
    removed = 0
    for part in place.parts():
        dup = []
        for key in place.read([part], columns=["key"]).column(0).to_pylist():
            dup.append(key in seen)
            seen.add(key)
        if not any(dup):
            continue
        table = place.read([part])
        kept = table.filter(pa.array([not d for d in dup]))
        removed += table.num_rows - kept.num_rows
        if kept.num_rows:
            place.write(kept.replace_schema_metadata(table.schema.metadata), part)
        else:
            place.delete(part)
    return removed
