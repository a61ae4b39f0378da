"""``shard_videos(inputs, cfg) -> ShardReport``: the library call behind ``avprep shard``.

The parent process discovers inputs, takes this rank's share, works out what an
earlier run already committed, and hands the rest to ``dispatch.Dispatcher``
(worker processes, timeouts, replacement). No per-file problem is ever raised.

SIGTERM (Slurm's scancel and time limit) stops a run as Ctrl-C does: a
KeyboardInterrupt, so the workers are killed with their ffmpegs, the lock is
released, and the same command resumes.
"""

from __future__ import annotations

import time
from collections import Counter

from avprep.config import ShardConfig
from avprep.discover import discover, keep_committed_ids, partition
from avprep.dispatch import Dispatcher
from avprep.interrupts import sigterm_as_interrupt
from avprep.media.decoder import Decoder
from avprep.outdir import OutputDir
from avprep.report import Progress, ShardReport
from avprep.tools import require_ffmpeg


def shard_videos(
    inputs: list[str], cfg: ShardConfig, *, progress: Progress | None = None
) -> ShardReport:
    """Shard this rank's share of ``inputs`` into ``cfg.out_dir``; see the module doc."""
    if Decoder(cfg.decoder).needs_ffmpeg:
        require_ffmpeg()
    progress = progress or Progress()
    t0 = time.perf_counter()
    everything = discover(inputs)
    out = OutputDir(cfg.out_dir, cfg.rank)
    with sigterm_as_interrupt():
        out.open(cfg)
        try:
            done = out.take_over({inp.input_key: inp.real_path for inp in everything})
            for notice in out.notices:
                progress.log(notice)
            items = partition(keep_committed_ids(everything, done), cfg.rank, cfg.world_size)
            todo = [i for i, inp in enumerate(items) if inp.input_key not in done]
            report = ShardReport(
                out_dir=str(cfg.out_dir),
                rank=cfg.rank,
                world_size=cfg.world_size,
                run=out.run,
                n_inputs=len(items),
                n_already_done=len(items) - len(todo),
            )
            progress.start(len(items), report.n_already_done)
            other_rows = Dispatcher(items, cfg, out, report, progress).run(todo)
            if other_rows:
                out.write_other_rows(other_rows)
            final = out.store.read_manifest()
            seen = Counter(final.column("input_key").to_pylist())
            report.unaccounted = [inp.source for inp in items if seen[inp.input_key] != 1]
            report.seconds = time.perf_counter() - t0
            progress.update(report, segments=report.n_segments)
            return report
        finally:
            progress.stop()
            out.close()
