"""Each shard's sample count, and rank 0 alone reading them (issue 16): with N ranks, the
shards are listed, checked and counted (their manifest parts read) once, by rank 0, and
every rank gets the same answer, or the same one-line refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile

from conftest import run_cli

from avprep import schema
from cmac_core.data.loader import count_shards
from cmac_core.data.shards import count_samples, resolve, shard_counts


def _tar_count(path) -> int:
    with tarfile.open(path) as tar:
        return len({m.name.split(".", 1)[0] for m in tar})


def test_each_shard_is_counted_from_its_manifest_part_or_its_tar(demo_shards, tmp_path):
    urls = resolve(str(demo_shards))
    counts = shard_counts(urls)
    assert counts == [_tar_count(u) for u in urls] and sum(counts) == count_samples(urls) == 18
    bare = tmp_path / "bare"  # the tars alone, no manifest: counted from their headers
    bare.mkdir()
    for u in urls:
        shutil.copy(u, bare)
    assert not (bare / schema.MANIFEST_DIR).exists()
    assert shard_counts(resolve(str(bare))) == counts
    assert shard_counts([f"pipe:cat {urls[0]}"]) is None  # unknown without reading it
    counted = count_shards(str(demo_shards))
    assert (counted.urls, counted.bad, counted.counts) == (urls, {}, counts)


SCRIPT = """
import json, sys
from cmac_core import distributed, train
from cmac_core.config import preset
from cmac_core.data import loader, shards

reads = []
real = shards._from_manifest
def counting(folder, names):  # the real reader, its calls counted
    reads.append(sorted(names))
    return real(folder, names)
shards._from_manifest = counting
info = distributed.init("cpu", announce=False)
try:
    counted = train._rank0_counted(sys.argv[1], info)
    stream = loader.train_stream(sys.argv[1], preset("tiny").data, batch_size=2, workers=0,
                                 rank=info.rank, world_size=info.world_size, counted=counted)
    out = {"reads": reads, "counts": counted.counts, "n": stream.n_samples}
except Exception as e:
    out = {"reads": reads, "error": f"{type(e).__name__}: {e}"}
with open(f"{sys.argv[2]}/rank-{info.rank}.json", "w") as f:
    json.dump(out, f)
distributed.shutdown()
"""


def _two_ranks(tmp_path, spec: str, port: int) -> list[dict]:
    script = tmp_path / "counts.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"out-{port}"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(port), str(script), spec, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_two_ranks_read_the_manifests_once_on_rank_0(demo_shards, tmp_path):
    """A real 2-process gloo group: rank 0 reads the manifest parts, once; rank 1 reads
    none and builds its stream from what rank 0 sent."""
    zero, one = _two_ranks(tmp_path, str(demo_shards), 29571)
    assert len(zero["reads"]) == 1 and one["reads"] == []
    assert zero["counts"] == one["counts"] == shard_counts(resolve(str(demo_shards)))
    assert zero["n"] == one["n"] == 18
    zero, one = _two_ranks(tmp_path, str(tmp_path / "none" / "shard-*.tar"), 29572)
    assert zero["error"] == one["error"] and zero["error"].startswith("ShardSpecError: no shards")


def tamper_count(part, n_segments: int) -> int:
    """Set the first row's ``n_segments`` of the manifest part ``part`` (the rest as
    written); returns the part's count now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(part)
    i = table.schema.get_field_index("n_segments")
    counts = table.column(i).to_pylist()
    counts[0] = n_segments
    field = table.schema.field(i)
    pq.write_table(table.set_column(i, field, pa.array(counts, field.type)), part)
    return sum(counts)


def test_a_manifest_count_past_what_its_shard_can_hold_is_damage(demo_shards, tmp_path):
    """A part edited to claim 10^9 samples (issue 11): believed, the plan's arrays took
    gigabytes (a loader worker killed, a traceback). The count is checked against the
    shard's bytes (3 tar headers a sample at least); the part is named in one line, its
    shard counted from its tar headers, and pretraining goes on."""
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards)
    first = sorted(shards.glob("*.tar"))[0]
    part = shards / schema.MANIFEST_DIR / f"{first.stem}.parquet"
    claimed = tamper_count(part, 10**9)
    assert shard_counts(resolve(str(shards))) == shard_counts(resolve(str(demo_shards)))
    proc = run_cli("pretrain", str(shards), "--out", str(tmp_path / "run"), "--config", "tiny",
                   "--steps", "2", "--device", "cpu", env={"OMP_NUM_THREADS": "1"}, timeout=120)  # fmt: skip
    warned = [line for line in proc.stderr.splitlines() if str(part) in line]
    assert warned == [
        f"damaged manifest part {part}: n_segments sum to {claimed} samples, more than "
        f"its {first.stat().st_size}-byte shard can hold (at most "
        f"{first.stat().st_size // 1536}); counting the samples of {first.name} from its tar "
        "headers"
    ], proc.stderr
    assert (tmp_path / "run" / "last.pt").exists()
    tamper_count(part, -5)
    assert shard_counts(resolve(str(shards))) == shard_counts(resolve(str(demo_shards)))
