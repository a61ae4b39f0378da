"""Reading shards from remote storage (issue 17's read side): pretrain, embed and inspect on
an ``s3://`` output of ``avprep shard``, against moto's S3 server on loopback.

Each test compares the bucket with a local copy of the same shards (downloaded, byte for
byte): the same shard list and sample count, the same steps per epoch (no ``--steps``:
the count comes from the manifest parts in the bucket), the same embedding rows, the
same ``inspect`` counts. A server that fails some requests still trains. The servers and
helpers are tests/test_remote.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import read_shards, run_cli

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from test_remote import (  # noqa: E402  (servers and helpers shared with the shard tests)
    BUCKET,
    SHARD,
    ProxyHandler,
    _download,
    _serve,
    _tars,
    _upload,
    _url,
    s3_server,
    videos,  # noqa: F401  (fixture)
)

TINY = ("--config", "tiny", "--batch-size", "2", "--workers", "1")
QUIET = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def s3():
    """test_remote's S3 server, on a clean slate and left clean (``s3_server``)."""
    with s3_server(BUCKET) as fs:
        yield fs


@pytest.fixture(scope="module")
def shards(s3, videos, tmp_path_factory) -> tuple[str, Path]:  # noqa: F811
    """Five 2 s clips sharded to ``s3://BUCKET/rr-shards`` (three shards), and a local copy."""
    src = _upload(s3, videos, "rr-videos")
    url = f"s3://{BUCKET}/rr-shards"
    run_cli("shard", src, "--out", url, "--workers", "1", "--shard-max-samples", "2", *SHARD)
    return url, _download(s3, url, tmp_path_factory.mktemp("rr") / "local")


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> tuple[Path, Path]:
    """One epoch of tiny pretraining from the bucket and from the local copy (no --steps)."""
    url, local = shards
    runs = tmp_path_factory.mktemp("rr-runs")
    for name, spec in (("remote", url + "/"), ("local", str(local))):
        run_cli("pretrain", spec, "--out", str(runs / name), *TINY, "--epochs", "1", env=QUIET)
    return runs / "remote", runs / "local"


def _steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def test_the_bucket_resolves_counts_and_checks_as_its_local_copy(shards, s3):
    from cmac_core.data.shards import check_shards, count_samples, resolve

    url, local = shards
    names = [p.name for p in sorted(local.glob("*.tar"))]
    for spec in (url, url + "/", f"{url}/shard-*.tar"):
        assert resolve(spec) == [f"{url}/{n}" for n in names]
    assert resolve(f"{url}/{names[0]}") == [f"{url}/{names[0]}"]  # one shard is itself
    assert len(names) == 3
    assert count_samples(resolve(url)) == count_samples(resolve(str(local))) == 5
    cut = s3.cat_file(f"{BUCKET}/rr-shards/{names[0]}")
    s3.pipe_file(f"{BUCKET}/rr-cut/{names[0]}", cut[: len(cut) // 2 // 512 * 512])
    good, bad = check_shards([*resolve(url), f"s3://{BUCKET}/rr-cut/{names[0]}"])
    assert good == resolve(url)
    assert bad == {f"s3://{BUCKET}/rr-cut/{names[0]}": "cut short (no end-of-archive marker)"}
    assert count_samples([f"s3://{BUCKET}/rr-cut/{names[0]}"]) is None  # no manifest there


def test_a_manifest_count_in_the_bucket_past_what_its_shard_can_hold_is_damage(
    s3, demo_shards, tmp_path
):  # fmt: skip
    """The local rule (``test_shard_counts``) for a bucket: a part claiming 10^9 samples
    of its shard is named as damaged, never believed; the count is then unknown (give
    --steps), as for a missing part."""
    import shutil

    from test_shard_counts import tamper_count

    from avprep import remote_read
    from avprep.manifest import DamagedPart
    from cmac_core.data.shards import count_samples, resolve, shard_counts

    local = tmp_path / "shards"
    shutil.copytree(demo_shards, local)
    url = _upload(s3, local, "rr-tampered")
    assert count_samples(resolve(url)) == count_samples(resolve(str(local))) == 18
    first = sorted(local.glob("*.tar"))[0]
    part = local / "manifest" / f"{first.stem}.parquet"
    tamper_count(part, 10**9)
    s3.put_file(str(part), f"{BUCKET}/rr-tampered/manifest/{part.name}")
    with pytest.raises(DamagedPart, match=f"{first.stat().st_size}-byte shard can hold"):
        remote_read.shard_counts(resolve(url))
    assert remote_read.count_samples(resolve(url)) is None
    assert shard_counts(resolve(url)) is None


def test_pretrain_reads_an_epoch_from_the_bucket_without_steps(trained):
    """The epoch's length comes from the bucket's manifest parts: the same steps as on disk."""
    remote, local = trained
    assert _steps(remote) == _steps(local) and len(_steps(remote)) >= 2
    assert (remote / "last.pt").exists()


def test_embed_from_the_bucket_gives_the_rows_of_the_local_copy(shards, trained, tmp_path):
    import pyarrow.dataset as ds

    from cmac_core.embed.table import VECTORS

    url, local = shards
    ckpt = trained[1] / "last.pt"
    tables = {}
    for name, spec in (("remote", url), ("local", str(local))):
        out = tmp_path / name
        run_cli("embed", spec, "--ckpt", str(ckpt), "--out", str(out), "--workers", "1",
                "--device", "cpu", env=QUIET)  # fmt: skip
        tables[name] = ds.dataset(str(out), format="parquet").to_table().sort_by("key")
    a, b = tables["remote"], tables["local"]
    assert a.column("key").to_pylist() == b.column("key").to_pylist() == sorted(read_shards(local))
    for col in ("video_id", "segment", "start_s", "end_s", *VECTORS):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col


def test_localize_from_the_bucket_maps_what_the_local_copy_maps(shards, trained, tmp_path):
    url, local = shards
    ckpt = trained[1] / "last.pt"
    maps = {}
    for name, spec in (("remote", url), ("local", str(local))):
        out = tmp_path / name
        run_cli("localize", spec, "--ckpt", str(ckpt), "--out", str(out), "--limit", "3",
                "--device", "cpu", env=QUIET)  # fmt: skip
        maps[name] = {p.name: p.read_bytes() for p in out.glob("*.npy")}
    assert maps["remote"] == maps["local"] and len(maps["remote"]) >= 3


def test_inspect_prints_the_counts_of_the_local_copy(shards, tmp_path):
    url, local = shards
    got = json.loads(run_cli("inspect", url, "--json", "--png", str(tmp_path / "s.png")).stdout)
    want = json.loads(run_cli("inspect", str(local), "--json").stdout)
    for key in ("shards", "bytes", "samples", "inputs", "hours", "reasons"):
        assert got[key] == want[key], key
    assert got["shard_dir"] == url and got["pattern"].startswith(f"{url}/shard-")
    assert (tmp_path / "s.png").stat().st_size > 1000
    table = run_cli("inspect", url + "/").stdout
    assert "samples" in table and " 5 " in table.split("samples", 1)[1].splitlines()[0] + " "


@pytest.mark.parametrize("spec", ["s3://{bucket}/rr-none/", "s3://{bucket}/rr-shards/x-*.tar"])
def test_no_shards_at_a_url_is_one_line(spec, shards, tmp_path):
    proc = run_cli("pretrain", spec.format(bucket=BUCKET), "--out", str(tmp_path / "run"), *TINY,
                   "--steps", "1", check=False)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "no .tar shards in s3://" in lines[0]
    proc = run_cli("inspect", f"s3://{BUCKET}/rr-none", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"avprep: error: s3://{BUCKET}/rr-none is not a directory"


def test_a_server_that_fails_some_requests_still_trains(shards, tmp_path):
    """Every 5th request to S3 is a 503 SlowDown (botocore's retries off): the listing, the
    count, the checks and the loader workers' reads are retried; the epoch is whole."""
    url, _ = shards
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    proxy = _serve(ProxyHandler, upstream=(upstream.hostname, upstream.port), fail_every=5,
                   count=0, failed=0, deny=())  # fmt: skip
    env = {**QUIET, "AWS_ENDPOINT_URL": _url(proxy), "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard", "AVPREP_REMOTE_TRIES": "8",
           "AVPREP_REMOTE_BLOCK_BYTES": "65536"}  # fmt: skip
    try:
        run_cli("pretrain", url, "--out", str(tmp_path / "run"), *TINY, "--epochs", "1", env=env)
    finally:
        proxy.shutdown()
    assert proxy.failed >= 3, proxy.failed
    assert len(_steps(tmp_path / "run")) >= 2


def test_shards_in_the_bucket_are_listed_counted_checked_and_read_by_webdataset(
    s3, videos, tmp_path  # noqa: F811  (the fixture)
):  # fmt: skip
    """avprep.remote_read, for readers: the committed shards of an output URL, their sample
    count from the manifest, the cheap tar check, and webdataset reading them."""
    import webdataset as wds

    from avprep import remote_read

    src = _upload(s3, videos, "read-in")
    out_url = f"s3://{BUCKET}/read-out"
    run_cli("shard", src, "--out", out_url, "--workers", "1", "--shard-max-samples", "2", *SHARD)
    s3.pipe_file(f"{BUCKET}/read-out/.shard-r0000-009-w00-00000.tar.x.tmp", b"hidden")
    urls = remote_read.shard_urls(out_url + "/")
    assert urls == sorted(f"{out_url}/{n}" for n in _tars(s3, out_url)) and len(urls) == 3
    assert remote_read.shard_urls(f"{out_url}/shard-*-00001.tar") == [urls[1]]
    assert remote_read.count_samples(urls) == 5
    assert [remote_read.check_shard(u) for u in urls] == [None] * 3
    whole = s3.cat_file(urls[0].removeprefix("s3://"))
    s3.pipe_file(f"{BUCKET}/cut/shard.tar", whole[: len(whole) // 2 // 512 * 512])
    assert remote_read.check_shard(f"s3://{BUCKET}/cut/shard.tar") == (
        "cut short (no end-of-archive marker)"
    )
    remote_read.register_webdataset()
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]
    local = _download(s3, out_url, tmp_path / "got")
    assert sorted(keys) == sorted(read_shards(local)) and len(keys) == 5


@pytest.mark.slow
def test_pretrain_from_the_bucket_killed_and_resumed_sees_the_same_keys(shards, tmp_path):
    """Issue 18's kill -9 test on shards in the bucket (issue 17: the resume tests of local
    folders, against the S3 server): a run SIGKILLed mid-run and resumed trains on the
    same keys, step by step and across epoch boundaries, as one never interrupted; and
    those are the keys the same run sees on the local copy of the shards."""
    from test_exact_resume import ENV, PRETRAIN, _args, _killed_and_resumed

    from cmac_core.data.position import read_keys, read_log

    url, local = shards
    whole, cut, on_disk = tmp_path / "whole", tmp_path / "cut", tmp_path / "disk"
    run_cli("pretrain", *_args(url, whole, workers=1), env=ENV)
    said, _ = _killed_and_resumed(url, cut, workers=1, launch=PRETRAIN)
    assert "starts anew" not in said and "another data layout" not in said
    keys = read_keys(whole)
    assert len(keys) == 14 and all(len(k) == 2 for k in keys)
    assert read_keys(cut) == keys and read_log(cut) == read_log(whole)
    run_cli("pretrain", *_args(local, on_disk, workers=1), env=ENV)
    assert read_keys(on_disk) == keys
