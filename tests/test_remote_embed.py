"""avprep embed --out s3://bucket/prefix (issue 17): the table's parts uploaded whole to moto's
S3 server on loopback, as tests/test_embed.py checks them on disk.

Each test compares the bucket with the same embedding written to a local folder: the same
keys and vectors, read back by real readers (pyarrow's dataset over s3fs, pandas through
fsspec, polars through its own object-store client); the per-video table beside the
prefix; a run killed with SIGKILL while parts go up resumes to the same table, every key
once; the rank's lease refuses a second run and is taken over from a dead one; a server that
fails some requests is retried. The servers are tests/test_remote.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import read_shards, run_cli

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from test_remote import BUCKET, ProxyHandler, _objects, _serve, _url, s3_server  # noqa: E402

from cmac_core.embed.table import VECTORS  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as fs:
        yield fs


@pytest.fixture(scope="module")
def local(demo_shards, tiny_ckpt, tmp_path_factory) -> Path:
    """The reference: the same embedding into a local folder, with its per-video table."""
    emb = tmp_path_factory.mktemp("remote-emb") / "emb"
    run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", str(emb), "--per-video",
            "--device", "cpu", "--workers", "1", env=ENV)  # fmt: skip
    return emb


def _table(s3, prefix: str):
    """The table under ``s3://BUCKET/prefix`` as pyarrow's dataset reads it over s3fs."""
    s3.invalidate_cache()
    return ds.dataset(f"{BUCKET}/{prefix}", filesystem=s3, format="parquet").to_table()


def _rows(t) -> dict[str, dict]:
    return {r["key"]: r for r in t.to_pylist()}


def _same_rows(got, want) -> None:
    a, b = _rows(got), _rows(want)
    assert sorted(a) == sorted(b) and len(a) == got.num_rows == want.num_rows
    for key, row in a.items():
        for col in ("video_id", "segment", "start_s", "end_s", *VECTORS):
            assert row[col] == b[key][col], (key, col)


def test_embed_to_a_bucket_gives_the_local_table(s3, local, demo_shards, tiny_ckpt, tmp_path):
    """Parts under the prefix and nothing else, the per-video table beside it, no lease or
    staging left; pyarrow, pandas and polars read the prefix as the local table."""
    url = f"s3://{BUCKET}/emb"
    staging = tmp_path / "staging"
    proc = run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", url,
                   "--per-video", "--device", "cpu", "--workers", "1",
                   env={**ENV, "AVPREP_STAGING_DIR": str(staging)})  # fmt: skip
    assert f"table: {url}/*.parquet" in proc.stdout and f"{url}.videos.parquet" in proc.stdout
    objects = _objects(s3, url)
    assert objects and all(o.startswith("part-00000-") and o.endswith(".parquet")
                           for o in objects), objects  # fmt: skip
    assert _objects(s3, f"s3://{BUCKET}/.emb.avprep") == []  # the lease, released
    assert not staging.exists() or not any(staging.iterdir())
    want = ds.dataset(str(local), format="parquet").to_table()
    _same_rows(_table(s3, "emb"), want)
    assert sorted(want.column("key").to_pylist()) == sorted(read_shards(demo_shards))
    meta = pq.read_schema(s3.open(f"{BUCKET}/emb/{objects[0]}")).metadata
    assert (
        meta[b"checkpoint_sha256"]
        == pq.read_schema(next(local.glob("*.parquet"))).metadata[b"checkpoint_sha256"]
    )
    videos = pq.read_table(s3.open(f"{BUCKET}/emb.videos.parquet"))
    assert videos.equals(pq.read_table(local.with_name("emb.videos.parquet")))

    import pandas as pd

    frame = pd.read_parquet(f"s3://{BUCKET}/emb/")
    assert sorted(frame["key"]) == sorted(want.column("key").to_pylist())
    polars = pytest.importorskip("polars")
    options = {"aws_endpoint_url": os.environ["AWS_ENDPOINT_URL"], "aws_allow_http": "true",
               "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "aws_region": "us-east-1"}  # fmt: skip
    pl = polars.read_parquet(f"s3://{BUCKET}/emb/*.parquet", storage_options=options)
    assert sorted(pl["key"].to_list()) == sorted(frame["key"])

    again = run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", url,
                    "--device", "cpu", "--workers", "1", env=ENV)  # fmt: skip
    assert f"embed: 0 segments embedded ({len(frame)} already done)" in again.stdout
    assert _objects(s3, url) == objects


class SlowPartsProxy(ProxyHandler):
    """test_remote's proxy, holding each upload of a part ``server.delay_s`` before it goes
    on (the run is still embedding when the first parts land); ``server.inflight``: parts
    held or on their way."""

    def do_PUT(self) -> None:
        srv = self.server
        part = "/part-" in self.path
        if part:
            with srv.lock:
                srv.inflight += 1
        try:
            if part:
                time.sleep(srv.delay_s)
            self._forward()
        finally:
            if part:
                with srv.lock:
                    srv.inflight -= 1


def _proxy(handler=ProxyHandler, **attrs):
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    defaults = {"upstream": (upstream.hostname, upstream.port), "fail_every": 0, "count": 0,
                "failed": 0, "deny": (), "delay_s": 0.0, "inflight": 0, "lock": threading.Lock()}  # fmt: skip
    return _serve(handler, **{**defaults, **attrs})


def _parts(s3, prefix: str) -> dict[str, bytes]:
    """The committed parts under ``prefix``; none while it holds nothing (its only object,
    a lease or a marker, may go between a check and the listing: no exists-then-ls)."""
    s3.invalidate_cache()
    try:
        listed = s3.ls(f"{BUCKET}/{prefix}")
    except FileNotFoundError:
        return {}
    return {p.rsplit("/", 1)[-1]: s3.cat_file(p) for p in listed if p.endswith(".parquet")}


@pytest.mark.slow
def test_a_run_killed_while_parts_go_up_resumes_to_the_same_table(s3, local, demo_shards,
                                                                  tiny_ckpt, tmp_path):  # fmt: skip
    """SIGKILL the run (two parts of two rows in the bucket, more on their way); the same
    command resumes: nothing committed is redone or taken back, every key once, the dead
    run's lease taken over at once (same host, its process gone), no temporaries left."""
    url = f"s3://{BUCKET}/killed"
    proxy = _proxy(SlowPartsProxy, delay_s=0.5)
    code = ("from cmac_core.embed import embed\n"
            f"embed({str(demo_shards)!r}, {str(tiny_ckpt)!r}, {url!r}, device='cpu', workers=1,"
            " batch_size=2, rows_per_part=2)\n")  # fmt: skip
    env = {**os.environ, **ENV, "AWS_ENDPOINT_URL": _url(proxy),
           "AVPREP_STAGING_DIR": str(tmp_path / "staging")}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(_parts(s3, "killed")) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no part reached the bucket"
            time.sleep(0.05)
        assert proc.poll() is None, f"the run finished before the kill: {proc.stderr.read()}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        while proxy.inflight:  # a part whose upload was under way when the run died
            time.sleep(0.05)
        proxy.shutdown()
    assert proc.returncode == -signal.SIGKILL
    before = _parts(s3, "killed")
    partial = _table(s3, "killed").num_rows
    n = len(read_shards(demo_shards))
    assert 0 < partial < n and ".emb.avprep" not in str(before)
    assert _objects(s3, f"s3://{BUCKET}/.killed.avprep") == ["lock-00000"]  # the dead run's
    resumed = run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", url,
                      "--device", "cpu", "--workers", "1", "--batch-size", "2",
                      env={**ENV, "AVPREP_STAGING_DIR": str(tmp_path / "staging")})  # fmt: skip
    assert f"({partial} already done)" in resumed.stdout
    after = _parts(s3, "killed")
    assert {k: after[k] for k in before} == before  # committed parts: not taken back
    t = _table(s3, "killed")
    keys = t.column("key").to_pylist()
    assert len(keys) == len(set(keys)) == n  # every key once
    want = _rows(ds.dataset(str(local), format="parquet").to_table())
    for key, row in _rows(t).items():
        for col in VECTORS:
            np.testing.assert_allclose(row[col], want[key][col], atol=1e-5)
    assert _objects(s3, f"s3://{BUCKET}/.killed.avprep") == []
    assert all(o.startswith("part-") and o.endswith(".parquet") for o in _objects(s3, url))
    uploads = s3.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix="killed/")
    assert not uploads.get("Uploads")
    assert not any((tmp_path / "staging").glob("avprep-staging-*"))


def test_the_lease_refuses_a_live_run_and_is_taken_from_a_lapsed_one(s3, demo_shards,
                                                                      tiny_ckpt):  # fmt: skip
    """A fresh lease of rank 0 held by another host: one line, exit 2, nothing written.
    The same lease older than AVPREP_REMOTE_LEASE_S: taken over, the run completes."""
    url = f"s3://{BUCKET}/leased"
    lease = f"{BUCKET}/.leased.avprep/lock-00000"
    holder = {"host": "another-host", "pid": 4242, "start": "1", "token": "theirs"}
    s3.pipe_file(lease, json.dumps({**holder, "renewed": time.time()}).encode())
    args = ("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", url, "--device", "cpu",
            "--workers", "1")  # fmt: skip
    env = {**ENV, "AVPREP_REMOTE_LEASE_S": "30"}
    proc = run_cli(*args, env=env, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"avprep: error: rank 0 is already embedding into {url} "
                               "(another-host pid 4242, lease renewed")  # fmt: skip
    assert _objects(s3, url) == []
    s3.pipe_file(lease, json.dumps({**holder, "renewed": time.time() - 60}).encode())
    run_cli(*args, env=env)
    assert _table(s3, "leased").num_rows == len(read_shards(demo_shards))
    assert _objects(s3, f"s3://{BUCKET}/.leased.avprep") == []


def test_a_server_that_fails_some_requests_still_embeds(s3, local, demo_shards, tiny_ckpt):
    """Every 3rd request is a 503 SlowDown (botocore's retries off): the lease, the
    listings, the parts' reads and uploads are retried; the table is the local one."""
    url = f"s3://{BUCKET}/flaky"
    proxy = _proxy(fail_every=3)
    env = {**ENV, "AWS_ENDPOINT_URL": _url(proxy), "AWS_MAX_ATTEMPTS": "1",
           "AWS_RETRY_MODE": "standard", "AVPREP_REMOTE_TRIES": "8"}  # fmt: skip
    try:
        run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", url, "--per-video",
                "--device", "cpu", "--workers", "1", env=env)  # fmt: skip
    finally:
        proxy.shutdown()
    assert proxy.failed >= 3, proxy.failed
    _same_rows(_table(s3, "flaky"), ds.dataset(str(local), format="parquet").to_table())


@pytest.mark.parametrize(("out", "message"), [
    ("s3://no-such-bucket/emb", "cannot write to s3://no-such-bucket/emb: its bucket does not exist"),
    (f"s3://{BUCKET}", f"s3://{BUCKET} has no parent prefix to keep the run's leases in"),
    ("https://host/emb", "--out cannot be an https:// URL (read only)"),
])  # fmt: skip
def test_an_unusable_out_url_is_one_line(out, message, s3, demo_shards, tiny_ckpt, tmp_path):
    """One line, exit 2 (run in an empty folder: no local folder made there)."""
    in_work = ["sh", "-c", 'cd "$0" && exec "$@"', str(tmp_path)]
    proc = run_cli("embed", str(demo_shards), "--ckpt", str(tiny_ckpt), "--out", out,
                   "--device", "cpu", check=False, env=ENV, prefix=in_work)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("avprep: error: ") and message in lines[0], lines
    assert list(tmp_path.iterdir()) == []
