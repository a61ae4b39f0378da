"""Frozen embeddings of every stored segment -> Parquet, keyed by sample key.

``EMB_DIR/part-{rank:05d}-{n:05d}.parquet`` (zstd, explicit schema, written under
a temporary name and renamed), readable as one dataset by pyarrow, pandas and
DuckDB. A re-run skips keys already committed, so a killed run resumes to the
same table: every sample key exactly once.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

import cmac_core
from avprep import schema
from avprep.outdir import try_lock
from cmac_core import checkpoint, distributed
from cmac_core.config import PretrainConfig
from cmac_core.data.augment import finish_video
from cmac_core.data.evaluation import eval_loader
from cmac_core.data.shards import resolve
from cmac_core.models import build

ROWS_PER_PART = 2048
PART_EVERY_S = 300.0  # also commit a part this often: a kill loses at most minutes of work
# Underscore: pyarrow and pandas skip it when they read EMB_DIR as a dataset, and DuckDB's
# 'EMB_DIR/*.parquet' does not descend into it, so the segment table stays segments only.
PER_VIDEO_DIR = "_per_video"


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
        try:
            cfg = PretrainConfig.from_dict(ckpt["config"])
            model = build(ckpt["arch"], cfg.model)
            model.load_state_dict(ckpt["model"])
        except Exception as e:  # missing entries, an unknown arch, weights of another config
            first = (str(e).strip().splitlines() or [""])[0]
            raise checkpoint.CheckpointError(
                f"{path}: its config and weights do not make a model ({type(e).__name__}: {first[:160]})"
            ) from e
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


def _check_same_table(out_dir: Path, metadata: dict[str, str]) -> None:
    """One table, one checkpoint and one clip placement: a rerun must match the parts there."""
    parts = sorted(out_dir.glob("part-*.parquet"))
    if not parts:
        return
    have = {k.decode(): v.decode() for k, v in (pq.read_schema(parts[0]).metadata or {}).items()}
    sha = have.get("checkpoint_sha256", "")
    if sha != metadata["checkpoint_sha256"]:
        raise EmbedError(
            f"{out_dir} holds embeddings of another checkpoint (sha256 {sha[:12]}...): use another --out"
        )
    if have.get("clips_per_segment") != metadata["clips_per_segment"]:
        raise EmbedError(
            f"{out_dir} holds embeddings made with --clips-per-segment "
            f"{have.get('clips_per_segment')}, not {metadata['clips_per_segment']}: use another --out"
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
        self.since = time.monotonic()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part or time.monotonic() - self.since > PART_EVERY_S:
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
        self.since = time.monotonic()


@dataclass
class EmbedReport:
    out_dir: Path
    rows_written: int  # all ranks
    rows_skipped: int  # samples of these shards already in the table (all ranks)
    clips: int
    seconds: float
    per_video: Path | None = None  # the per-video table, when written
    errors: dict[str, str] = field(default_factory=dict)  # shard -> why it could not be read on


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
    """Embed every sample of ``shards`` with the frozen ``ckpt`` model into ``out_dir``.

    A shard that cannot be read on (damaged, not an avprep shard) does not stop
    the run: its readable samples are embedded and ``errors`` says which and why.
    """
    _check_args(
        out_dir, batch_size=batch_size, clips_per_segment=clips_per_segment, workers=workers
    )
    t0 = time.perf_counter()
    info = distributed.init(device)
    out_dir = Path(out_dir)
    lock = None
    try:
        urls = resolve(shards)
        frozen = Frozen.load(ckpt, info.device)
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = try_lock(out_dir / f".lock-{info.rank:05d}")
        if lock is None:
            raise EmbedError(f"rank {info.rank} is already embedding into {out_dir}: wait for it")
        # 0: as many windows as cover the segment (the CLI's word for it)
        metadata = {**frozen.metadata, "clips_per_segment": str(clips_per_segment or 0)}
        _check_same_table(out_dir, metadata)
        done = committed_keys(out_dir)
        mine = urls[info.rank :: info.world_size]
        dim = frozen.cfg.model.embed_dim
        writer = PartWriter(out_dir, info.rank, table_schema(dim, metadata), rows_per_part)
        notes = StreamNotes()
        clips = 0
        try:
            if mine:
                loader = eval_loader(mine, frozen.cfg.data, clips_per_segment=clips_per_segment,
                                     workers=workers, done=done)  # fmt: skip
                for sample, z_v, z_a in _embed_stream(
                    loader, frozen, batch_size, info.device, notes
                ):
                    m = sample["meta"]
                    writer.add({
                        "key": sample["key"], "video_id": m["video_id"], "segment": m["segment"],
                        "start_s": m["start_s"], "end_s": m["end_s"], "label": m.get("label"),
                        "video_embedding": z_v, "audio_embedding": z_a,
                    })  # fmt: skip
                    clips += sample["clips"]
        finally:
            writer.flush()  # every complete row counts, whatever stopped the run
        written, skipped, clips = (distributed.all_reduce_sum(x, info.device)
                                   for x in (writer.written, notes.skipped, clips))  # fmt: skip
        errors = distributed.gather_objects(notes.errors)
        if info.distributed:
            torch.distributed.barrier()
        videos = write_per_video(out_dir, metadata) if per_video and info.is_main else None
        return EmbedReport(out_dir, written, skipped, clips, time.perf_counter() - t0, videos,
                           {k: v for e in errors for k, v in e.items()})  # fmt: skip
    finally:
        if lock is not None:
            os.close(lock)
        distributed.shutdown()


def _check_args(out_dir, *, batch_size: int, clips_per_segment: int | None, workers: int) -> None:
    checks = [
        (batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}"),
        (clips_per_segment is None or clips_per_segment >= 1,
         f"--clips-per-segment must be >= 1 (or 0: cover the segment), got {clips_per_segment}"),
        (workers >= 0, f"--workers must be >= 0, got {workers}"),
        (not Path(out_dir).exists() or Path(out_dir).is_dir(), f"{out_dir} is a file, not a folder"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise EmbedError(message)


@dataclass
class StreamNotes:
    """What the stream met besides clips: resumed keys, unreadable shards."""

    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # url -> first error

    def take(self, sample: dict) -> bool:
        """True if ``sample`` is a marker (noted here), False for a sample of clips."""
        if "__skipped__" in sample:
            self.skipped += 1
        elif "__error__" in sample:
            self.errors.setdefault(sample["__url__"], sample["__error__"])
        else:
            return False
        return True


class ClipPacker:
    """Packs the clips of consecutive samples into forward batches of exactly ``batch_size``.

    A sample's clips may span two batches; the last batch is padded by repeating
    its last clip. One input shape for the whole run means the backend tunes once
    (cuDNN's benchmark mode, oneDNN's primitive cache) instead of once per shape,
    and the batches of the forward-only bound are the same as the run's.
    """

    def __init__(self, batch_size: int, *, pin: bool = False) -> None:
        self.batch_size, self.pin = batch_size, pin
        self.video: list[torch.Tensor] = []
        self.spec: list[torch.Tensor] = []
        self.n = 0
        self._staging: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._turn = 0

    def add(self, video: torch.Tensor, spec: torch.Tensor):
        """Queue a sample's clips; yield every full batch as ``(video, spec, n_real)``."""
        i = 0
        while i < video.shape[0]:
            take = min(self.batch_size - self.n, video.shape[0] - i)
            self.video.append(video[i : i + take])
            self.spec.append(spec[i : i + take])
            self.n += take
            i += take
            if self.n == self.batch_size:
                yield self._emit()

    def flush(self):
        """The last, partial batch padded to full size, if any clips are left."""
        if self.n:
            pad = self.batch_size - self.n
            self.video.append(self.video[-1][-1:].expand(pad, *self.video[-1].shape[1:]))
            self.spec.append(self.spec[-1][-1:].expand(pad, *self.spec[-1].shape[1:]))
            yield self._emit(real=self.batch_size - pad)

    def _emit(self, real: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        video, spec = self._out(self.video[0], self.spec[0])
        torch.cat(self.video, out=video)
        torch.cat(self.spec, out=spec)
        self.video, self.spec, self.n = [], [], 0
        return video, spec, real or self.batch_size

    def _out(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two staging buffers used in turn: with pinned memory, one batch's copy to the
        device may still run while the next batch is assembled in the other."""
        if not self._staging:
            self._staging = [
                tuple(
                    torch.empty((self.batch_size, *x.shape[1:]), dtype=x.dtype, pin_memory=self.pin)
                    for x in (v, a)
                )
                for _ in range(2)
            ]
        self._turn ^= 1
        return self._staging[self._turn]


def _embed_stream(
    loader, frozen: Frozen, batch_size: int, device: torch.device, notes: StreamNotes
):
    """``(sample, z_v, z_a)`` per sample in loader order; ``sample["clips"]`` is its clip count.

    On a GPU, batch i+1's forward (and the copy of its result to pinned host memory)
    is queued before the host waits for batch i's copy, so the device works while
    the host assigns and writes rows. A staging buffer is reused only after the
    batch that used it has been collected, and so copied to the device.
    """
    packer = ClipPacker(batch_size, pin=device.type == "cuda")
    waiting: deque[dict] = deque()  # samples whose clips are not all embedded yet
    ready_v: list[torch.Tensor] = []  # embeddings of clips not yet assigned to a sample
    ready_a: list[torch.Tensor] = []
    inflight = None

    def launch(batch):
        """Queue the forward, and on a GPU the copy of its result to pinned host memory."""
        video, spec, real = batch
        z_v, z_a = frozen.embed(
            video.to(device, non_blocking=True), spec.to(device, non_blocking=True)
        )
        z_v, z_a = z_v[:real].float(), z_a[:real].float()
        if device.type != "cuda":
            return z_v, z_a, None
        host = [torch.empty(z.shape, dtype=z.dtype, pin_memory=True) for z in (z_v, z_a)]
        host[0].copy_(z_v, non_blocking=True)
        host[1].copy_(z_a, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host[0], host[1], done

    def collect(out):
        z_v, z_a, done = out
        if done is not None:
            done.synchronize()  # this batch's copy only: the next forward keeps running
        ready_v.append(z_v)
        ready_a.append(z_a)
        v, a = torch.cat(ready_v), torch.cat(ready_a)
        i = 0
        while waiting and waiting[0]["clips"] <= v.shape[0] - i:
            s = waiting.popleft()
            k = s["clips"]
            z_v = F.normalize(v[i : i + k].mean(0), dim=0)
            z_a = F.normalize(a[i : i + k].mean(0), dim=0)
            i += k
            yield s, z_v.numpy().astype(np.float32), z_a.numpy().astype(np.float32)
        ready_v[:], ready_a[:] = [v[i:]], [a[i:]]

    def step(batch):
        nonlocal inflight
        out = launch(batch)
        if inflight is not None:
            yield from collect(inflight)
        inflight = out

    for sample in loader:
        if notes.take(sample):
            continue
        video, spec = sample.pop("video"), sample.pop("spec")
        sample["clips"] = video.shape[0]
        waiting.append(sample)
        for batch in packer.add(video, spec):
            yield from step(batch)
    for batch in packer.flush():
        yield from step(batch)
    if inflight is not None:
        yield from collect(inflight)


def write_per_video(out_dir: Path, metadata: dict[str, str]) -> Path:
    """``_per_video/videos.parquet``: one row per video, the mean of its segments (renormalised)."""
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
