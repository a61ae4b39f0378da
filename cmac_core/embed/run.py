"""``embed``: frozen embeddings of every stored segment -> the Parquet table, keyed by key.

A re-run skips keys already committed, so a killed run resumes to the same table:
every sample key exactly once. Damaged samples, non-finite embeddings and shards
that end early are reported, never written; a key met twice is written once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avprep import schema
from avprep.urls import remote_scheme
from cmac_core import distributed
from cmac_core.data.damage import SAMPLE, Damage, is_marker, marker
from cmac_core.data.evaluation import MAX_CLIPS, eval_loader
from cmac_core.data.shards import resolve
from cmac_core.embed.folder import TableFolder, place_of
from cmac_core.embed.frozen import Frozen
from cmac_core.embed.ledger import KeyLedger
from cmac_core.embed.packing import ClipPacker
from cmac_core.embed.table import (
    ROWS_PER_PART,
    UNIT,
    VECTORS,
    EmbedError,
    PartWriter,
    check_same_table,
    committed_keys,
    keep_first_rows,
    table_schema,
    write_per_video,
)
from cmac_core.watchdog import Watchdog, wait_for_all


@dataclass
class EmbedReport:
    out_dir: Path | str  # a URL stays a string
    rows_written: int  # all ranks
    rows_skipped: int  # samples of these shards already in the table (all ranks)
    clips: int
    seconds: float
    per_video: Path | str | None = None  # the per-video table (EMB_DIR.videos.parquet), if written
    damage: Damage = field(default_factory=Damage)  # damaged samples and shards (all ranks)
    # keys met more than once (all ranks): key -> the shards it came from, the kept one first
    collisions: dict[str, list[str]] = field(default_factory=dict)
    precision: str = "float32"  # the forward's: "bfloat16" (autocast, on CUDA) or "float32"
    workers: int = 0  # data-loader processes per rank


def embed(
    shards: str | list[str],
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    clips_per_segment: int | None = None,
    workers: int | None = None,
    per_video: bool = False,
    rows_per_part: int = ROWS_PER_PART,
    precision: str = "auto",
) -> EmbedReport:
    """Embed every sample of ``shards`` with the frozen ``ckpt`` model into ``out_dir``, which
    holds the table's parts only; the per-video table and the run's locks go beside it
    (``TableFolder``). ``out_dir`` may be a URL (``s3://bucket/emb``): the same layout and
    commit rules in the store (``RemoteTable``; parts staged locally, uploaded whole).

    A damaged sample (or one whose embedding is not finite) and a shard that cannot
    be read on do not stop the run: the rest is embedded and ``damage`` says which and
    why. A key met twice (within a shard, a copied shard, two datasets whose files share
    names) is written once, from the first shard read; ``collisions`` names them all, and
    their videos are left out of the per-video table (they may be two videos).

    ``workers`` None: as many loader processes as pretraining used (the checkpoint's
    ``optim.workers``), within this rank's share of the CPUs (``loader_workers``).
    ``precision`` auto: bf16 autocast on CUDA, once the first batch's embeddings agree with
    float32 ones (cosine >= ``BF16_MIN_COSINE``; else float32 throughout), float32
    elsewhere; or ``bfloat16`` / ``float32``. Ranks that finish early wait for the others
    on the rendezvous store, not in a collective (``watchdog.wait_for_all``).
    """
    _check_args(
        out_dir, batch_size=batch_size, clips_per_segment=clips_per_segment, workers=workers
    )
    if precision not in ("auto", "bfloat16", "float32"):
        raise EmbedError(f"precision must be auto, bfloat16 or float32, got {precision!r}")
    t0 = time.perf_counter()
    info = distributed.init(device)
    place = None
    dog = Watchdog.start_for(info, what="sample", name_laggards=False)
    try:
        urls = resolve(shards)
        frozen = Frozen.load(ckpt, info.device, clips=batch_size)
        if workers is None:
            workers = loader_workers(frozen.cfg.optim.workers)
        amp = AutocastChoice.of(precision, info.device)
        place = place_of(out_dir)
        out_dir = place.table if isinstance(place, TableFolder) else place.url
        place.open(info.rank, info.world_size)
        # 0: as many windows as cover the segment (the CLI's word for it)
        metadata = {**frozen.metadata, "clips_per_segment": str(clips_per_segment or 0)}
        check_same_table(place, metadata)
        committed = committed_keys(place)
        done = set(committed)
        mine = urls[info.rank :: info.world_size]
        dim = frozen.cfg.model.embed_dim
        schema_ = table_schema(dim, frozen.cfg.model.video_widths[-1], metadata)
        writer = PartWriter(place, info.rank, schema_, rows_per_part)
        notes = StreamNotes()
        clips = 0
        try:
            if mine:
                loader = eval_loader(mine, frozen.cfg.data, clips_per_segment=clips_per_segment,
                                     workers=workers, done=done)  # fmt: skip
                for sample, vectors in _embed_stream(
                    loader, frozen, batch_size, info.device, notes, amp=amp
                ):
                    m = sample["meta"]
                    writer.add({
                        "key": sample["key"], "video_id": m["video_id"], "segment": m["segment"],
                        "start_s": m["start_s"], "end_s": m["end_s"], "label": m.get("label"),
                        **vectors,
                    })  # fmt: skip
                    clips += sample["clips"]
                    if dog is not None:
                        dog.progress(clips, "embedding")
        finally:
            writer.flush()  # every complete row counts, whatever stopped the run
        if dog is not None:
            dog.progress(clips, "waiting for the other ranks to finish")
        wait_for_all("embed", info)  # imbalanced shares: off any collective
        written, skipped, clips = (distributed.all_reduce_sum(x, info.device)
                                   for x in (writer.written, notes.skipped, clips))  # fmt: skip
        damage = Damage()
        for rank_damage in distributed.gather_objects(notes.damage):
            damage.update(rank_damage)
        collisions = notes.keys.collisions(across_ranks=info.distributed)
        if info.is_main and (len(done) < len(committed) or notes.keys.across):
            # the same key from two ranks, or from an older version
            keep_first_rows(place)
        if info.distributed:
            torch.distributed.barrier()
        videos = None
        if per_video and info.is_main:
            videos = write_per_video(place, metadata, leave_out_keys=set(collisions))
        if dog is not None:
            dog.finish()
        return EmbedReport(out_dir, written, skipped, clips, time.perf_counter() - t0, videos,
                           damage, collisions, amp.name, workers)  # fmt: skip
    finally:
        if dog is not None:
            dog.stop()
        if place is not None:
            place.close()
        distributed.shutdown()


def loader_workers(configured: int) -> int:
    """Loader processes per rank as pretraining sizes them (its ``optim.workers``), within
    this rank's share of the CPUs it may use (``LOCAL_WORLD_SIZE`` ranks on the node, one
    CPU each kept for the ranks themselves); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, min(max(1, configured), cpus // ranks - 1))


BF16_MIN_COSINE = 0.99  # per clip, each output, bf16 autocast against float32


@dataclass
class AutocastChoice:
    """The forward's precision: ``dtype`` None is float32; ``check`` compares the first
    batch against float32 before bf16 is trusted (``precision_agreement``)."""

    dtype: torch.dtype | None
    device_type: str
    check: bool = False
    agreement: float | None = None

    @classmethod
    def of(cls, precision: str, device: torch.device) -> AutocastChoice:
        if precision == "float32" or (precision == "auto" and device.type != "cuda"):
            return cls(None, device.type)
        return cls(torch.bfloat16, device.type, check=precision == "auto")

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def context(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def embed(self, frozen: Frozen, video: torch.Tensor, spec: torch.Tensor):
        if self.check:  # the first batch: bf16 only if it agrees with float32
            self.check = False
            self.agreement = min(precision_agreement(frozen, [(video, spec)], self.dtype).values())
            if self.agreement < BF16_MIN_COSINE:
                self.dtype = None
        with self.context():
            return frozen.embed(video, spec)


@torch.no_grad()
def precision_agreement(
    frozen: Frozen, batches, dtype: torch.dtype = torch.bfloat16
) -> dict[str, float]:
    """The lowest cosine similarity, per output (``VECTORS``: embeddings and features), between
    each clip's float32 output and its output under ``torch.autocast(dtype)`` on the model's
    device, over ``batches`` of ``(video, spec)`` already on that device. Usable on CPU
    (autocast cpu bf16) as on CUDA."""
    device_type = next(frozen.model.parameters()).device.type
    worst = dict.fromkeys(VECTORS, 1.0)
    for video, spec in batches:
        ref = frozen.embed(video, spec)
        with torch.autocast(device_type, dtype=dtype):
            low = frozen.embed(video, spec)
        for name, a, b in zip(VECTORS, ref, low, strict=True):
            cos = F.cosine_similarity(a.float(), b.float(), dim=1).min()
            worst[name] = min(worst[name], float(cos))
    return worst


def _check_args(
    out_dir, *, batch_size: int, clips_per_segment: int | None, workers: int | None
) -> None:
    checks = [  # (holds, the library's words, the command line's)
        (1 <= batch_size <= 65536, f"batch_size must be >= 1 and <= 65536, got {batch_size}",
         f"--batch-size must be >= 1 and <= 65536, got {batch_size}"),
        (clips_per_segment is None or 1 <= clips_per_segment <= MAX_CLIPS,
         f"clips_per_segment must be >= 1 and <= {MAX_CLIPS} (or None: cover the segment), "
         f"got {clips_per_segment}",
         f"--clips-per-segment must be >= 1 and <= {MAX_CLIPS} (or 0: cover the segment), "
         f"got {clips_per_segment}"),
        (workers is None or 0 <= workers <= 256, f"workers must be >= 0 and <= 256, got {workers}",
         f"--workers must be >= 0 and <= 256, got {workers}"),
        (remote_scheme(str(out_dir)) or not Path(out_dir).exists() or Path(out_dir).is_dir(),
         f"{out_dir} is a file, not a folder", None),
    ]  # fmt: skip
    for ok, message, cli in checks:
        if not ok:
            raise EmbedError(message, cli=cli)


@dataclass
class StreamNotes:
    """What the stream met besides clips to embed: resumed keys, keys met again, damage."""

    skipped: int = 0
    damage: Damage = field(default_factory=Damage)
    keys: KeyLedger = field(default_factory=KeyLedger)

    def take(self, sample: dict) -> bool:
        """True if ``sample`` is not to be embedded (a marker, a key met before; noted
        here), False for a sample of clips."""
        if is_marker(sample):
            self.damage.note(sample)
            return True
        url = sample.get("__url__", "?")
        if "__skipped__" in sample:
            self.skipped += self.keys.admit(sample["__skipped__"], url)
            return True
        return not self.keys.admit(sample["key"], url)


def _embed_stream(
    loader,
    frozen: Frozen,
    batch_size: int,
    device: torch.device,
    notes: StreamNotes,
    *,
    amp: AutocastChoice | None = None,
):
    """``(sample, vectors)`` per sample in loader order, ``vectors`` a dict of ``VECTORS``
    (each float32, the mean over the sample's clips; embeddings renormalised);
    ``sample["clips"]`` is its clip count. A sample with a non-finite vector is noted as
    damaged in ``notes``, not yielded.

    On a GPU, batch i+1's forward (and the copy of its result to pinned host memory)
    is queued before the host waits for batch i's copy, so the device works while
    the host assigns and writes rows. A staging buffer is reused only after the
    batch that used it has been collected, and so copied to the device.
    """
    packer = ClipPacker(batch_size, pin=device.type == "cuda")
    waiting: deque[dict] = deque()  # samples whose clips are not all embedded yet
    ready: list[list[torch.Tensor]] = [[] for _ in VECTORS]  # clips not yet assigned, per output
    inflight = None

    def launch(batch):
        """Queue the forward, and on a GPU the copy of its result to pinned host memory."""
        video, spec, real = batch
        video, spec = video.to(device, non_blocking=True), spec.to(device, non_blocking=True)
        outs = amp.embed(frozen, video, spec) if amp is not None else frozen.embed(video, spec)
        outs = [x[:real].float() for x in outs]
        if device.type != "cuda":
            return outs, None
        host = [torch.empty(x.shape, dtype=x.dtype, pin_memory=True) for x in outs]
        for h, x in zip(host, outs, strict=True):
            h.copy_(x, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    def collect(out):
        outs, done = out
        if done is not None:
            done.synchronize()  # this batch's copy only: the next forward keeps running
        for pending, x in zip(ready, outs, strict=True):
            pending.append(x)
        joined = [torch.cat(pending) for pending in ready]
        i = 0
        while waiting and waiting[0]["clips"] <= joined[0].shape[0] - i:
            s = waiting.popleft()
            k = s["clips"]
            vectors = {}
            for name, x in zip(VECTORS, joined, strict=True):
                mean = x[i : i + k].mean(0)
                vectors[name] = F.normalize(mean, dim=0) if name in UNIT else mean
            i += k
            if not all(torch.isfinite(v).all() for v in vectors.values()):
                why = f"sample {schema.shown(s['key'])}: its embedding is not finite (NaN or inf)"
                notes.damage.note(marker(s.get("__url__", "?"), why, kind=SAMPLE, key=s["key"]))
                continue  # never written as a vector
            yield s, {name: v.numpy().astype(np.float32) for name, v in vectors.items()}
        for pending, x in zip(ready, joined, strict=True):
            pending[:] = [x[i:]]

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
