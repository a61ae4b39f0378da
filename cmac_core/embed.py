"""Frozen embeddings of every stored segment -> Parquet, keyed by sample key.

``EMB_DIR/part-{rank:05d}-{n:05d}.parquet`` (zstd, explicit schema, written under
a temporary name and renamed), readable as one dataset by pyarrow, pandas and
DuckDB. A re-run skips keys already committed, so a killed run resumes to the
same table: every sample key exactly once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

import cmac_core
from avprep import schema
from cmac_core import checkpoint, distributed
from cmac_core.config import PretrainConfig
from cmac_core.data.augment import finish_video
from cmac_core.data.evaluation import eval_loader
from cmac_core.data.shards import resolve
from cmac_core.models import build

ROWS_PER_PART = 2048
PER_VIDEO_DIR = "per_video"


def table_schema(dim: int, metadata: dict[str, str]) -> pa.Schema:
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
        ],
        metadata=metadata,
    )


@dataclass
class Frozen:
    """A checkpoint's model in eval mode, with what the table records about it."""

    model: torch.nn.Module
    cfg: PretrainConfig
    metadata: dict[str, str]
    attention: bool

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> Frozen:
        ckpt = checkpoint.load(path, map_location="cpu")
        cfg = PretrainConfig.from_dict(ckpt["config"])
        model = build(ckpt["arch"], cfg.model)
        model.load_state_dict(ckpt["model"])
        model.to(device).eval()
        meta = {
            "checkpoint_sha256": checkpoint.sha256(path),
            "checkpoint_step": str(ckpt["step"]),
            "method": cfg.loss.method,
            "config": json.dumps(cfg.to_dict()),
            "schema_version": str(schema.SCHEMA_VERSION),
            "cmac_core_version": cmac_core.__version__,
        }
        return cls(model, cfg, meta, attention=cfg.loss.method == "cmac")

    @torch.no_grad()
    def embed(self, video: torch.Tensor, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips ``[N, 3, T, S, S]`` (uint8, or already normalised float), ``[N, 1, F, C]``
        -> L2-normalised ``z_v, z_a`` ``[N, D]``."""
        if video.dtype == torch.uint8:
            video = finish_video(video)
        feats = self.model(video, spec)
        return self.model.embed(feats, attention=self.attention)


def committed_keys(out_dir: Path) -> set[str]:
    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return set()
    return set(
        ds.dataset([str(p) for p in parts], format="parquet")
        .to_table(columns=["key"])
        .column(0)
        .to_pylist()
    )


class EmbedError(ValueError):
    """One-line problems with the output directory."""


def _check_same_checkpoint(out_dir: Path, sha: str) -> None:
    parts = sorted(out_dir.glob("part-*.parquet"))
    if parts:
        have = (pq.read_schema(parts[0]).metadata or {}).get(b"checkpoint_sha256", b"").decode()
        if have != sha:
            raise EmbedError(
                f"{out_dir} holds embeddings of another checkpoint (sha256 {have[:12]}...): use another --out"
            )


class PartWriter:
    """Buffers rows; writes ``part-{rank}-{n}.parquet`` atomically every ``rows_per_part`` rows."""

    def __init__(
        self, out_dir: Path, rank: int, schema_: pa.Schema, rows_per_part: int = ROWS_PER_PART
    ) -> None:
        self.out_dir, self.rank, self.schema, self.rows_per_part = (
            out_dir,
            rank,
            schema_,
            rows_per_part,
        )
        taken = [int(p.stem.split("-")[2]) for p in out_dir.glob(f"part-{rank:05d}-*.parquet")]
        self.next = max(taken, default=-1) + 1
        self.rows: list[dict] = []
        self.written = 0

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = self.out_dir / f"part-{self.rank:05d}-{self.next:05d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), tmp, compression="zstd")
        os.replace(tmp, final)
        self.next += 1
        self.written += len(self.rows)
        self.rows = []


@dataclass
class EmbedReport:
    out_dir: Path
    rows_written: int
    rows_skipped: int
    clips: int
    seconds: float


def embed(
    shards: str | list[str],
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    clips_per_segment: int | None = None,
    workers: int = 2,
    per_video: bool = False,
    rows_per_part: int = ROWS_PER_PART,
) -> EmbedReport:
    """Embed every sample of ``shards`` with the frozen ``ckpt`` model into ``out_dir``."""
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    info = distributed.init(device)
    out_dir = Path(out_dir)
    try:
        urls = resolve(shards)
        frozen = Frozen.load(ckpt, info.device)
        _check_same_checkpoint(out_dir, frozen.metadata["checkpoint_sha256"])
        done = committed_keys(out_dir)
        mine = urls[info.rank :: info.world_size]
        dim = frozen.cfg.model.embed_dim
        writer = PartWriter(out_dir, info.rank, table_schema(dim, frozen.metadata), rows_per_part)
        clips = 0
        if mine:
            loader = eval_loader(
                mine,
                frozen.cfg.data,
                clips_per_segment=clips_per_segment,
                workers=workers,
                done=done,
            )
            for sample, z_v, z_a in _embed_stream(loader, frozen, batch_size, info.device):
                m = sample["meta"]
                writer.add({
                    "key": sample["key"], "video_id": m["video_id"], "segment": m["segment"],
                    "start_s": m["start_s"], "end_s": m["end_s"], "label": m.get("label"),
                    "video_embedding": z_v, "audio_embedding": z_a,
                })  # fmt: skip
                clips += sample["video"].shape[0]
        writer.flush()
        if info.distributed:
            torch.distributed.barrier()
        if per_video and info.is_main:
            write_per_video(out_dir, frozen.metadata)
        return EmbedReport(out_dir, writer.written, len(done), clips, time.perf_counter() - t0)
    finally:
        distributed.shutdown()


def _embed_stream(loader, frozen: Frozen, batch_size: int, device: torch.device):
    """(sample, z_v, z_a) per sample; clips of several samples share a forward batch."""
    pending: list[dict] = []
    n_clips = 0

    def run(batch: list[dict]):
        video = torch.cat([s["video"] for s in batch]).to(device, non_blocking=True)
        spec = torch.cat([s["spec"] for s in batch]).to(device, non_blocking=True)
        z_v, z_a = frozen.embed(video, spec)
        z_v, z_a = z_v.float().cpu(), z_a.float().cpu()
        i = 0
        for s in batch:
            k = s["video"].shape[0]
            v, a = (
                F.normalize(z_v[i : i + k].mean(0), dim=0),
                F.normalize(z_a[i : i + k].mean(0), dim=0),
            )
            i += k
            yield s, v.numpy().astype(np.float32), a.numpy().astype(np.float32)

    for sample in loader:
        pending.append(sample)
        n_clips += sample["video"].shape[0]
        if n_clips >= batch_size:
            yield from run(pending)
            pending, n_clips = [], 0
    if pending:
        yield from run(pending)


def write_per_video(out_dir: Path, metadata: dict[str, str]) -> Path:
    """``per_video/videos.parquet``: one row per video, the mean of its segments (renormalised)."""
    parts = sorted(str(p) for p in out_dir.glob("part-*.parquet"))
    table = ds.dataset(parts, format="parquet").to_table()
    groups: dict[str, list[int]] = {}
    for i, vid in enumerate(table.column("video_id").to_pylist()):
        groups.setdefault(vid, []).append(i)
    v = np.asarray(table.column("video_embedding").to_pylist(), np.float32)
    a = np.asarray(table.column("audio_embedding").to_pylist(), np.float32)
    labels = table.column("label").to_pylist()
    starts, ends = table.column("start_s").to_pylist(), table.column("end_s").to_pylist()
    rows = []
    for vid in sorted(groups):
        idx = groups[vid]
        mv, ma = v[idx].mean(0), a[idx].mean(0)
        rows.append({"video_id": vid, "n_segments": len(idx), "start_s": min(starts[i] for i in idx),
                     "end_s": max(ends[i] for i in idx), "label": labels[idx[0]],
                     "video_embedding": mv / max(np.linalg.norm(mv), 1e-12),
                     "audio_embedding": ma / max(np.linalg.norm(ma), 1e-12)})  # fmt: skip
    dim = v.shape[1]
    schema_ = pa.schema(
        [("video_id", pa.string()), ("n_segments", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
         ("label", pa.string()), ("video_embedding", pa.list_(pa.float32(), dim)),
         ("audio_embedding", pa.list_(pa.float32(), dim))],
        metadata=metadata,
    )  # fmt: skip
    folder = out_dir / PER_VIDEO_DIR
    folder.mkdir(exist_ok=True)
    final = folder / "videos.parquet"
    tmp = folder / ".videos.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema_), tmp, compression="zstd")
    os.replace(tmp, final)
    return final
