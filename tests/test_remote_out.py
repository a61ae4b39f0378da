"""avprep shard --out s3://... (issue 17), the output side, against moto's S3 server on
loopback (tests/test_remote.py's servers and helpers), mirroring the local tests
(tests/test_cluster.py): a run killed with SIGKILL while writing to the bucket resumes
exactly once; ranks share a prefix; a lost manifest part is rebuilt from its shard; the
rank's lease refuses a second run; a server that fails some requests is retried; a bucket
that stops taking shards stops the run in one line and it resumes; a worker killed while
writing is replaced; a missing bucket is one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest
from conftest import read_manifest, read_shards, run_cli, shard_workers

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from test_remote import (  # noqa: E402  (servers and helpers shared with the input tests)
    BUCKET,
    SHARD,
    ProxyHandler,
    _assert_exactly_once,
    _download,
    _objects,
    _serve,
    _tars,
    _upload,
    _url,
    s3_server,
    videos,  # noqa: F401  (fixture)
)

from avprep.synth import make_demo_video  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    """test_remote's S3 server, on a clean slate and left clean (``s3_server``)."""
    with s3_server(BUCKET) as fs:
        yield fs


# -- kill -9, resume, ranks, the lease ----------------------------------------------------


def test_resume_after_kill_9_while_writing_to_the_bucket(s3, tmp_path):
    """SIGKILL the whole run twice, part way, with shards going to S3; the same command
    finishes the job: every input once, nothing committed taken back, no temporaries."""
    clips = tmp_path / "in"
    clips.mkdir()
    for i in range(10):
        make_demo_video(clips / f"clip{i:02d}.mp4", duration_s=4.0, size=(96, 64),
                        tone_hz=300 + 40 * i)  # fmt: skip
    src = _upload(s3, clips, "resume-in")
    out_url = f"s3://{BUCKET}/resume-out"
    args = [
        sys.executable,
        "-m",
        "avprep",
        "shard",
        src,
        "--out",
        out_url,
        "--workers",
        "2",
        "--shard-max-samples",
        "2",
        *SHARD,
    ]  # fmt: skip  (a shard per video)
    committed: set[str] = set()
    for need in (1, 3):  # kill once a shard is in the bucket, then after three more
        before = len(_tars(s3, out_url))
        proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while len(_tars(s3, out_url)) < before + need and proc.poll() is None:
                assert time.monotonic() < deadline, "no shard reached the bucket"
                time.sleep(0.1)
            assert proc.poll() is None, f"the run finished before the kill: {proc.stderr.read()}"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        shards = _tars(s3, out_url)
        assert committed <= shards  # nothing committed is ever taken back
        committed = shards
    got = _download(s3, out_url, tmp_path / "mid")
    done_before = {r["source"] for r in read_manifest(got).to_pylist() if r["status"] == "ok"}
    assert 0 < len(done_before) < 10
    run_cli(*args[3:])
    got = _download(s3, out_url, tmp_path / "after")
    rows = _assert_exactly_once(got, 10, segments=2)
    assert committed <= _tars(s3, out_url)
    last_run = max(r["run"] for r in rows)
    assert all(r["run"] < last_run for r in rows if r["source"] in done_before)  # not redone
    objects = _objects(s3, out_url)
    assert not [
        o for o in objects if o.endswith(".tmp") or "/." in o or o.startswith(".avprep/lock")
    ]
    run_cli(*args[3:])  # a finished prefix: nothing to do
    assert _assert_exactly_once(_download(s3, out_url, tmp_path / "again"), 10, segments=2) == rows
    uploads = s3.call_s3("list_multipart_uploads", Bucket=BUCKET, Prefix="resume-out/")
    assert not uploads.get("Uploads")


def test_three_ranks_into_one_prefix_cover_every_input_once(s3, videos, tmp_path):  # noqa: F811
    src = _upload(s3, videos, "ranks-in")
    out_url = f"s3://{BUCKET}/ranks-out"
    procs = [subprocess.Popen([sys.executable, "-m", "avprep", "shard", src, "--out", out_url,
                               "--rank", str(r), "--world-size", "3", "--workers", "1", *SHARD],
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
             for r in range(3)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    rows = _assert_exactly_once(_download(s3, out_url, tmp_path / "got"), 5, segments=1)
    from avprep.discover import discover, partition

    owner = {i.source: r for r in range(3) for i in partition(discover([src]), r, 3)}
    assert {r["source"]: r["rank"] for r in rows} == owner


def test_a_lost_manifest_part_is_rebuilt_from_the_shard_in_the_bucket(s3, videos, tmp_path):  # noqa: F811
    """Killed between uploading a shard and its manifest part: rows rebuilt, not redone."""
    src = _upload(s3, videos, "rebuild-in")
    out_url = f"s3://{BUCKET}/rebuild-out"
    args = ("shard", src, "--out", out_url, "--workers", "1", "--shard-max-samples", "2", *SHARD)
    run_cli(*args)
    first = {r["video_id"]: (r["shards"], r["run"])
             for r in read_manifest(_download(s3, out_url, tmp_path / "a")).to_pylist()}  # fmt: skip
    parts = sorted(o for o in _objects(s3, out_url) if o.startswith("manifest/shard-"))
    assert len(parts) >= 3
    s3.rm_file(f"{BUCKET}/rebuild-out/{parts[1]}")
    run_cli(*args)
    rows = _assert_exactly_once(_download(s3, out_url, tmp_path / "b"), 5, segments=1)
    assert {r["video_id"]: (r["shards"], r["run"]) for r in rows} == first


def test_the_same_rank_twice_on_a_prefix_is_refused(s3, videos, tmp_path):  # noqa: F811
    """The rank's lease in the bucket: a second run of the rank is refused in one line
    while the first holds it; the first finishes and releases it."""
    src = _upload(s3, videos, "lease-in")
    out_url = f"s3://{BUCKET}/lease-out"
    first = subprocess.Popen([sys.executable, "-m", "avprep", "shard", src, "--out", out_url,
                              "--workers", "1", *SHARD], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while ".avprep/lock-r0000" not in _objects(s3, out_url):
            assert first.poll() is None and time.monotonic() < deadline, "no lease taken"
            time.sleep(0.05)
        second = run_cli("shard", src, "--out", out_url, "--workers", "1", *SHARD, check=False)
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("avprep: error: rank 0 is already running on s3://")
    assert ".avprep/lock-r0000" not in _objects(s3, out_url)
    _assert_exactly_once(_download(s3, out_url, tmp_path / "got"), 5, segments=1)


# -- faults -------------------------------------------------------------------------------


def test_a_server_that_fails_some_requests_is_retried(s3, videos, tmp_path):  # noqa: F811
    """Every 4th request to S3 is a 503 SlowDown (botocore's own retries off): inputs are
    read and shards and parts written all the same; an object answered 403 is a failed
    row ``access denied``."""
    src = _upload(s3, videos, "faulty-in")
    s3.put_file(str(videos / "clip00.mp4"), f"{BUCKET}/faulty-in/secret.mp4")
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    proxy = _serve(ProxyHandler, upstream=(upstream.hostname, upstream.port), fail_every=4,
                   count=0, failed=0, deny=("/secret.mp4",))  # fmt: skip
    try:
        out_url = f"s3://{BUCKET}/faulty-out"
        env = {"AWS_ENDPOINT_URL": _url(proxy), "AWS_MAX_ATTEMPTS": "1",
               "AWS_RETRY_MODE": "standard", "AVPREP_REMOTE_TRIES": "8"}  # fmt: skip
        run_cli("shard", src, "--out", out_url, "--workers", "2", *SHARD, env=env)
    finally:
        proxy.shutdown()
    assert proxy.failed >= 5, proxy.failed
    rows = {r["source"].rsplit("/", 1)[-1]: r for r in
            read_manifest(_download(s3, out_url, tmp_path / "got")).to_pylist()}  # fmt: skip
    denied = rows.pop("secret.mp4")
    assert denied["status"] == "failed" and denied["reason"].startswith("access denied"), denied
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows.values()), [
        (r["source"], r["reason"]) for r in rows.values()
    ]


def test_a_bucket_that_stops_taking_shards_stops_the_run_and_it_resumes(s3, videos, tmp_path):  # noqa: F811
    """After two shards every shard upload fails (retries spent): the run stops in one
    line, exit 2, with what it committed intact; the same command against a working store
    finishes exactly once, nothing redone."""
    src = _upload(s3, videos, "stops-in")
    out_url = f"s3://{BUCKET}/stops-out"
    upstream = urlsplit(os.environ["AWS_ENDPOINT_URL"])
    proxy = _serve(ProxyHandler, upstream=(upstream.hostname, upstream.port), fail_every=0,
                   count=0, failed=0, deny=(), tars_ok=2, tars=0)  # fmt: skip
    args = ("shard", src, "--out", out_url, "--workers", "1", "--shard-max-samples", "1", *SHARD)
    try:
        env = {"AWS_ENDPOINT_URL": _url(proxy), "AWS_MAX_ATTEMPTS": "1",
               "AVPREP_REMOTE_TRIES": "2"}  # fmt: skip
        proc = run_cli(*args, env=env, check=False)
    finally:
        proxy.shutdown()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"avprep: error: cannot write to {out_url}: remote: "), lines
    assert "(after 2 tries)" in lines[0]
    first = _tars(s3, out_url)
    assert len(first) == 2
    done = {
        r["video_id"] for r in read_manifest(_download(s3, out_url, tmp_path / "a")).to_pylist()
    }
    assert len(done) == 2
    run_cli(*args)
    rows = _assert_exactly_once(_download(s3, out_url, tmp_path / "b"), 5, segments=1)
    assert first <= _tars(s3, out_url)
    assert {r["video_id"] for r in rows if r["run"] == 1} == done


def test_a_worker_killed_mid_run_writing_to_the_bucket_is_replaced(s3, tmp_path):
    """SIGKILL one worker while shards go to S3: its video is failed 'worker died', what it
    had not committed is redone by its replacement, each input once."""
    clips = tmp_path / "in"
    clips.mkdir()
    for i in range(8):
        make_demo_video(clips / f"clip{i:02d}.mp4", duration_s=4.0, size=(96, 64),
                        tone_hz=300 + 40 * i)  # fmt: skip
    src = _upload(s3, clips, "killed-worker-in")
    out_url = f"s3://{BUCKET}/killed-worker-out"
    proc = subprocess.Popen([sys.executable, "-m", "avprep", "shard", src, "--out", out_url,
                             "--workers", "2", "--shard-max-samples", "2", *SHARD],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not _tars(s3, out_url) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = shard_workers(proc.pid)
        assert workers and proc.poll() is None
        os.kill(workers[0], signal.SIGKILL)
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = read_manifest(_download(s3, out_url, tmp_path / "got")).to_pylist()
    assert Counter(r["source"] for r in rows) == Counter(f"{src}/clip{i:02d}.mp4" for i in range(8))
    failed = [r for r in rows if r["status"] != "ok"]
    assert len(failed) <= 1 and all(r["reason"] == "worker died (exit code -9)" for r in failed)
    assert len(read_shards(tmp_path / "got")) == 2 * (8 - len(failed))


def test_an_out_url_in_a_missing_bucket_is_one_line(s3, videos, tmp_path):  # noqa: F811
    proc = run_cli("shard", str(videos / "clip00.mp4"), "--out", "s3://no-such-bucket/x",
                   *SHARD, check=False)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("avprep: error: cannot write to s3://no-such-bucket/x: its bucket "
                        "does not exist")  # fmt: skip
