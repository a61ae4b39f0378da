"""The seek reader on shards in a bucket (issue 17 with issue 16): ``s3://`` v2 shards are read
by ranged GETs of a clip's headers, json, frames and columns, as local ones are by pread,
against moto's S3 server on loopback (tests/test_remote.py's).

The same clips as from the local copy of the same shards, for the same seed (the stage
alone, and the training loader with workers); a fraction of the shard's bytes fetched; a
server that fails some requests gives the same clips; a shard cut short and one gone
after listing are damage of that shard, and the rest is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from test_schema_v2 import _same

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from test_remote import BUCKET, ProxyHandler, _serve, _url, s3_server  # noqa: E402

from cmac_core.config import DataConfig, preset  # noqa: E402
from cmac_core.data.loader import train_stream  # noqa: E402
from cmac_core.data.seek import ShardClips  # noqa: E402
from cmac_core.data.shards import SharedEpoch, resolve  # noqa: E402
from cmac_core.data.stages import ClipWindow  # noqa: E402


@pytest.fixture(scope="module")
def bucket(demo_shards):
    """The demo shards (and their manifest) uploaded to ``s3://BUCKET/seek``."""
    with s3_server(BUCKET) as fs:
        for p in sorted(demo_shards.rglob("*")):
            if p.is_file() and ".avprep" not in p.parts:
                fs.put_file(str(p), f"{BUCKET}/seek/{p.relative_to(demo_shards).as_posix()}")
        yield fs


def _clips(urls: list[str], cfg: DataConfig, *, seek: bool = True):
    window = ClipWindow(cfg.clip_frames, audio_seconds=cfg.audio_seconds, seed=0, rank=0,
                        epoch=SharedEpoch(0))  # fmt: skip
    stage = ShardClips(window, clips_per_sample=cfg.clips_per_sample, seek=seek)
    return stage, list(stage(iter({"url": u} for u in urls)))


def _equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert "__error__" not in x and "__error__" not in y
        assert x["key"] == y["key"] and x["window"] == y["window"]
        assert list(x["jpegs"]) == list(y["jpegs"])
        assert x["spec"].tobytes() == y["spec"].tobytes()


def test_s3_shards_are_seeked_to_the_clips_of_the_local_copy(bucket, demo_shards, monkeypatch):
    """The stage gives the clips of the local shards: by default in one GET per shard (each
    under 8 MiB), and with 4 KiB GETs (``AVPREP_REMOTE_SEEK_BLOCK_BYTES``) fetching less
    than half of the shards' bytes; webdataset's stream of the same URLs gives them too."""
    cfg = preset("base").data  # 8 frames, 0.5 s of audio
    urls = resolve(f"s3://{BUCKET}/seek/")
    local = resolve(str(demo_shards))
    assert [u.rsplit("/", 1)[1] for u in urls] == [Path(p).name for p in local]
    remote, got = _clips(urls, cfg)
    disk, want = _clips(local, cfg)
    _equal(got, want)
    assert remote.samples_seeked == disk.samples_seeked == len(got)
    assert remote.requests == len(urls)  # one block of 8 MiB each
    monkeypatch.setenv("AVPREP_REMOTE_SEEK_BLOCK_BYTES", str(4096))
    small, got_small = _clips(urls, cfg)
    _equal(got_small, want)
    shard_bytes = sum(Path(p).stat().st_size for p in local)
    assert small.bytes_read < shard_bytes / 2, (small.bytes_read, shard_bytes)
    assert small.requests >= 3 * len(got)  # headers and json, the frames, the columns
    _, streamed = _clips(urls, cfg, seek=False)  # webdataset's stream of the same URLs
    _equal(got, streamed)


def test_the_loader_from_the_bucket_gives_the_batches_of_the_local_copy(bucket, demo_shards):
    cfg = DataConfig(**{**preset("tiny").data.__dict__, "clips_per_sample": 2})
    batches = {}
    for name, spec in (("s3", f"s3://{BUCKET}/seek/"), ("disk", str(demo_shards))):
        stream = train_stream(spec, cfg, batch_size=4, workers=2, seed=3, seek=True)
        it = iter(stream.loader)
        batches[name] = [next(it) for _ in range(5)]
    _same(batches["s3"], batches["disk"])
    assert all(torch.isfinite(b["video"]).all() for b in batches["s3"])


def test_a_server_that_fails_some_requests_gives_the_same_clips(bucket, demo_shards):
    """Every 2nd request is a 503 SlowDown (botocore's retries off): retried, same clips.
    (Every 3rd failed only twice when the shards came out small: 6 requests in all.)"""
    cfg = preset("base").data
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    proxy = _serve(ProxyHandler, upstream=(upstream.hostname, upstream.port), fail_every=2,
                   count=0, failed=0, deny=())  # fmt: skip
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS")}
    os.environ.update({"AWS_ENDPOINT_URL": _url(proxy), "AWS_MAX_ATTEMPTS": "1"})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        urls = [f"s3://{BUCKET}/seek/{Path(p).name}" for p in resolve(str(demo_shards))]
        _, got = _clips(urls, cfg)
    finally:
        proxy.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.failed >= 3, proxy.failed
    _equal(got, _clips(resolve(str(demo_shards)), cfg)[1])


def test_a_cut_or_missing_shard_is_damage_of_that_shard(bucket, demo_shards, monkeypatch):
    """A shard cut in its middle: the clips of its samples before the cut, then one shard
    marker; a shard deleted after listing: one shard marker (missing); the next shard is
    read whole. (4 KiB GETs: the cut is met in a read, not in the first block.)"""
    monkeypatch.setenv("AVPREP_REMOTE_SEEK_BLOCK_BYTES", str(4096))
    cfg = preset("base").data
    local = resolve(str(demo_shards))
    whole = Path(local[0]).read_bytes()
    bucket.pipe_file(f"{BUCKET}/cut/a.tar", whole[: len(whole) // 2 + 100])  # never on a header
    urls = [f"s3://{BUCKET}/cut/a.tar", f"s3://{BUCKET}/cut/gone.tar",
            f"s3://{BUCKET}/seek/{Path(local[1]).name}"]  # fmt: skip
    _, got = _clips(urls, cfg)
    errors = [c for c in got if "__error__" in c]
    assert [e["__url__"] for e in errors] == urls[:2], errors
    assert "missing" in str(errors[1]["__error__"])
    good = [c["key"] for c in got if "__error__" not in c]
    first = [c["key"] for c in _clips(local[:1], cfg)[1]]
    last = [c["key"] for c in _clips(local[1:2], cfg)[1]]
    assert 0 < len(good) - len(last) < len(first)  # the cut shard's samples before the cut
    assert good == first[: len(good) - len(last)] + last
