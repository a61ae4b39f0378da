"""avprep shard from and to remote storage, against real servers on the loopback interface.

An S3-compatible server (moto's standalone server, the one s3fs tests against) and
plain HTTP file servers written here (byte ranges, folder listings, and faults on
demand: 503s, 403s, no ranges). s3fs finds the server through the environment only
(``AWS_ENDPOINT_URL`` and the ``testing`` keys), as a user's job would. Nothing here
reaches beyond this machine.

Here: the servers and helpers the other remote tests share, and the input side: an s3
prefix sharded to an s3 ``--out`` gives the same rows, keys and member bytes as the same
files on disk; a missing object is a failed row; decoders that need a path read a spool
copy; HTTP folders, manifests, retries and servers without ranges. The output side (kill
-9 and resume, ranks, the lease, faults while writing) is tests/test_remote_out.py; the
readers of shards in a bucket tests/test_remote_read.py and test_remote_seek.py; embed to
a bucket tests/test_remote_embed.py.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import io
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

import pytest
from conftest import read_manifest, read_shards, run_cli

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

from avprep.synth import make_demo_video  # noqa: E402

BUCKET = "avprep-test"
SHARD = ("--segment-seconds", "2", "--quiet")


# -- servers ------------------------------------------------------------------------------


class FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root``: files with byte ranges (unless ``server.no_ranges``),
    folders as an HTML list of links. ``server.fail_every`` N: every Nth GET of a file
    is a 503; ``server.deny``: names answered 403."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _target(self) -> Path:
        return self.server.root / unquote(urlsplit(self.path).path).lstrip("/")

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _send(self, status: int, data: bytes, headers: dict | None = None, body=True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        srv = self.server
        srv.requests.append((self.command, self.path, self.headers.get("Range")))
        path = self._target()
        if path.name in srv.deny:
            return self._send(403, b"forbidden", body=body)
        if path.is_dir():
            links = "".join(f'<a href="{p.name}{"/" if p.is_dir() else ""}">{p.name}</a>\n'
                            for p in sorted(path.iterdir()))  # fmt: skip
            return self._send(200, f"<html><body>{links}</body></html>".encode(),
                              {"Content-Type": "text/html"}, body)  # fmt: skip
        if not path.is_file():
            return self._send(404, b"not found", body=body)
        if body and srv.fail_every:
            srv.gets += 1
            if srv.gets % srv.fail_every == 0:
                srv.failed += 1
                return self._send(503, b"try again", body=body)
        data = path.read_bytes()
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not srv.no_ranges:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, body)
            return self._send(206, data[start : end + 1], {
                "Content-Range": f"bytes {start}-{end}/{len(data)}",
                "Accept-Ranges": "bytes"}, body)  # fmt: skip
        headers = {} if srv.no_ranges else {"Accept-Ranges": "bytes"}
        self._send(200, data, {"Content-Type": "application/octet-stream", **headers}, body)


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards every request to ``server.upstream`` (the S3 server), failing some:
    every ``server.fail_every``-th one with S3's 503 SlowDown, any whose key is in
    ``server.deny`` with S3's 403 AccessDenied, and every PUT of a ``.tar`` after the
    first ``server.tars_ok`` ones (if set) with 503 InternalError."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _error(self, status: int, code: str) -> None:
        data = f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _forward(self) -> None:
        srv = self.server
        body = self._body()
        srv.count += 1
        key = unquote(urlsplit(self.path).path)
        if any(key.endswith(d) for d in srv.deny):
            return self._error(403, "AccessDenied")
        if (
            getattr(srv, "tars_ok", None) is not None
            and self.command == "PUT"
            and (key.endswith(".tar"))
        ):
            srv.tars += 1
            if srv.tars > srv.tars_ok:
                srv.failed += 1
                return self._error(503, "InternalError")
        if srv.fail_every and srv.count % srv.fail_every == 0:
            srv.failed += 1
            return self._error(503, "SlowDown")
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("expect", "transfer-encoding", "connection")}  # fmt: skip
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*srv.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        head = self.command == "HEAD"  # its Content-Length is the object's, with no body
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "server", "date") and (
                head or k.lower() != "content-length"
            ):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _serve(handler, **attrs) -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    for k, v in attrs.items():
        setattr(srv, k, v)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _url(srv: http.server.HTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


@contextlib.contextmanager
def s3_server(bucket: str):
    """moto's S3 server on loopback, s3fs pointed at it through the environment alone;
    yields the s3fs filesystem (``bucket`` made). moto keeps its S3 state per process, not
    per server, so the state is emptied through moto's reset endpoint before and after."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    reset = Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    urlopen(reset).close()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AVPREP_REMOTE_BACKOFF_S": "0.05",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    try:
        yield fs
    finally:
        urlopen(reset).close()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3():
    """The S3 server of this module (``s3_server``), a bucket made."""
    with s3_server(BUCKET) as fs:
        yield fs


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Five 2 s clips in a folder with a subfolder, a hidden file and a text file."""
    root = tmp_path_factory.mktemp("remote") / "videos"
    (root / "sub").mkdir(parents=True)
    colors = ("orange", "blue", "green", "red", "white")
    for i, color in enumerate(colors):
        folder = root / "sub" if i >= 3 else root
        make_demo_video(folder / f"clip{i:02d}.mp4", duration_s=2.0, size=(96, 64),
                        tone_hz=300 + 50 * i, color=color)  # fmt: skip
    (root / ".hidden.mp4").write_bytes(b"not listed")
    (root / "notes.txt").write_text("not a video")
    return root


def _upload(fs, folder: Path, prefix: str) -> str:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fs.put_file(str(p), f"{BUCKET}/{prefix}/{p.relative_to(folder).as_posix()}")
    return f"s3://{BUCKET}/{prefix}"


def _download(fs, url: str, dest: Path) -> Path:
    """The shards and manifest parts under ``url`` as a local folder (tests' readers)."""
    base = url.removeprefix("s3://").rstrip("/")
    fs.invalidate_cache()
    for key in fs.find(base):
        rel = key[len(base) + 1 :]
        if rel.startswith(".avprep/"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(fs.cat_file(key))
    return dest


def _comparable(sample: dict) -> dict:
    """A sample less what names where it came from (the json's source and input_key)."""
    meta = {k: v for k, v in sample["json"].items() if k not in ("source", "input_key")}
    return {**{k: v for k, v in sample.items() if k not in ("json", "spec")},
            "json": meta, "spec": sample["spec"].tobytes()}  # fmt: skip


ROW_FIELDS_SAME = ("video_id", "status", "reason", "n_segments", "shards", "duration_s",
                   "label", "width", "height", "decoder", "audio_rate_hz")  # fmt: skip


def _assert_exactly_once(out: Path, n_inputs: int, *, segments: int) -> list[dict]:
    rows = read_manifest(out).to_pylist()
    assert len(rows) == n_inputs == len({r["input_key"] for r in rows}), rows
    assert all(r["status"] == "ok" for r in rows), [(r["source"], r["reason"]) for r in rows]
    samples = read_shards(out)  # fails on a key seen twice
    per_video = Counter(s["json"]["video_id"] for s in samples.values())
    assert per_video == dict.fromkeys((r["video_id"] for r in rows), segments)
    return rows


def _tars(fs, url: str) -> set[str]:
    fs.invalidate_cache()
    base = url.removeprefix("s3://")
    try:
        return {p.rsplit("/", 1)[-1] for p in fs.ls(base) if p.endswith(".tar")}
    except FileNotFoundError:
        return set()


def _objects(fs, url: str) -> list[str]:
    fs.invalidate_cache()
    base = url.removeprefix("s3://")
    return [p[len(base) + 1 :] for p in fs.find(base)]


# -- inputs on S3 ---------------------------------------------------------------------------


def test_s3_prefix_to_s3_out_matches_the_same_files_on_disk(s3, videos, tmp_path):
    """Listed like a folder (subfolder in, hidden and non-media names out); the rows,
    sample keys and member bytes equal those of sharding the local folder."""
    src = _upload(s3, videos, "videos")
    local = tmp_path / "local"
    run_cli("shard", str(videos), "--out", str(local), "--workers", "1", *SHARD)
    out_url = f"s3://{BUCKET}/out-same"
    run_cli("shard", src, "--out", out_url, "--workers", "1", *SHARD)
    got = _download(s3, out_url, tmp_path / "got")
    assert sorted(p.name for p in got.glob("*.tar")) == sorted(p.name for p in local.glob("*.tar"))
    mine = {r["video_id"]: r for r in read_manifest(got).to_pylist()}
    theirs = {r["video_id"]: r for r in read_manifest(local).to_pylist()}
    assert set(mine) == set(theirs) == {"clip00", "clip01", "clip02", "sub_clip03", "sub_clip04"}
    for vid, row in mine.items():
        assert {k: row[k] for k in ROW_FIELDS_SAME} == {k: theirs[vid][k] for k in ROW_FIELDS_SAME}
        assert (
            row["source"] == row["path"] == f"{src}/{theirs[vid]['source'][len(str(videos)) + 1 :]}"
        )
    a, b = read_shards(got), read_shards(local)
    assert set(a) == set(b) and len(a) == 5
    for key in a:
        assert _comparable(a[key]) == _comparable(b[key]), key
        assert a[key]["json"]["source"].startswith(src + "/")
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("avprep-staging-*-r0000/*.tmp"))


def test_a_manifest_on_s3_with_a_missing_object_gives_a_failed_row(s3, videos, tmp_path):
    """A manifest URL: relative paths are below its folder, URLs stay URLs; a missing
    object is a failed row ``missing: no such object``, the run goes on (exit 0)."""
    src = _upload(s3, videos, "manifest-videos")
    s3.pipe_file(f"{BUCKET}/manifest-videos/list.jsonl", (
        json.dumps({"path": "clip00.mp4", "label": "a"}) + "\n"
        + json.dumps({"path": "gone.mp4", "label": "b"}) + "\n"
        + json.dumps({"path": f"{src}/sub/clip03.mp4", "label": "c"}) + "\n"
    ).encode())  # fmt: skip
    out = tmp_path / "out"  # remote inputs, local --out
    run_cli("shard", f"{src}/list.jsonl", "--out", str(out), "--workers", "2", *SHARD)
    rows = {r["source"]: r for r in read_manifest(out).to_pylist()}
    assert {s: (r["status"], r["reason"], r["label"]) for s, r in rows.items()} == {
        "clip00.mp4": ("ok", None, "a"),
        "gone.mp4": ("failed", "missing: no such object", "b"),
        f"{src}/sub/clip03.mp4": ("ok", None, "c"),
    }
    assert rows["gone.mp4"]["path"] == f"{src}/gone.mp4"
    assert not (out / ".avprep" / "spool-r0000").exists() or not any(
        (out / ".avprep" / "spool-r0000").rglob("*.mp4")
    )


@pytest.mark.parametrize("decoder", ["ffmpeg", "decord"])
def test_decoders_that_need_a_path_read_a_spooled_copy(decoder, s3, videos, tmp_path):
    """The ffmpeg CLI and decord decode a local spool copy, removed after each input;
    the samples equal those of the same decoder on the local files."""
    if decoder == "decord":
        pytest.importorskip("decord")
    src = _upload(s3, videos, f"spool-{decoder}")
    out, local = tmp_path / "out", tmp_path / "local"
    run_cli("shard", f"{src}/clip01.mp4", "--out", str(out), "--decoder", decoder,
            "--workers", "1", *SHARD)  # fmt: skip
    run_cli("shard", str(videos / "clip01.mp4"), "--out", str(local), "--decoder", decoder,
            "--workers", "1", *SHARD)  # fmt: skip
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "ok" and row["decoder"] == decoder
    a, b = read_shards(out), read_shards(local)
    assert {k: _comparable(v) for k, v in a.items()} == {k: _comparable(v) for k, v in b.items()}
    assert not list((out / ".avprep").rglob("*.mp4"))


# -- HTTP -------------------------------------------------------------------------------


def test_http_folder_manifest_retries_and_no_ranges(videos, tmp_path):
    """A folder URL is listed from its index page; a manifest URL's relative paths are
    below it. Every 3rd GET fails with 503 and is retried (4 KiB reads: many GETs). A
    server without byte ranges is read through a spool copy (PyAV cannot seek in it).
    Credentials in URLs are never shown or recorded."""
    (videos.parent / "list.csv").write_text("path,label\nvideos/clip00.mp4,a\nvideos/none.mp4,b\n")
    flaky = _serve(FileHandler, root=videos.parent, no_ranges=False, fail_every=3, gets=0,
                   failed=0, deny=(), requests=[])  # fmt: skip
    (tmp_path / "plain").mkdir()
    long = make_demo_video(tmp_path / "plain" / "long.mp4", duration_s=12.0, size=(160, 120))
    assert long.stat().st_size > 64 * 1024  # more than PyAV's first reads
    plain = _serve(FileHandler, root=long.parent, no_ranges=True, fail_every=0, gets=0,
                   failed=0, deny=(), requests=[])  # fmt: skip
    secret = "s3cr3t-t0ken"
    try:
        out = tmp_path / "out"
        base = _url(flaky).replace("http://", f"http://user:{secret}@")
        proc = run_cli("shard", f"{base}/videos/", f"{_url(flaky)}/list.csv",
                       f"{_url(plain)}/long.mp4?token={secret}", "--out", str(out),
                       "--workers", "2", "--segment-seconds", "2",
                       env={"AVPREP_REMOTE_BACKOFF_S": "0.05",
                            "AVPREP_REMOTE_BLOCK_BYTES": "4096"})  # fmt: skip
    finally:
        flaky.shutdown()
        plain.shutdown()
    assert flaky.failed >= 2, flaky.requests
    assert (f"/long.mp4?token={secret}", None) in [r[1:] for r in plain.requests]  # spooled
    rows = read_manifest(out).to_pylist()
    by_source = {r["source"]: (r["status"], r["reason"]) for r in rows}
    assert by_source["videos/none.mp4"] == ("failed", "missing: no such object")
    assert by_source["videos/clip00.mp4"] == ("ok", None)
    assert by_source[f"{_url(plain)}/long.mp4?token=REDACTED"] == ("ok", None)
    folder = [r for r in rows if r["source"].startswith("http://127.0.0.1") and "/videos/" in
              r["source"] and str(plain.server_address[1]) not in r["source"]]  # fmt: skip
    assert len(folder) == 5 and all(r["status"] == "ok" for r in folder)
    assert {r["video_id"] for r in folder} == {"clip00", "clip01", "clip02", "sub_clip03",
                                               "sub_clip04"}  # fmt: skip
    everything = proc.stdout + proc.stderr + json.dumps(rows, default=str)
    for tar in out.glob("*.tar"):
        everything += tar.read_bytes().decode("latin-1")
    assert secret not in everything


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["shard", "in", "--out", "https://host/x"], "--out cannot be an https:// URL (read only)"),
    (["shard", "nosuchproto://b/x.mp4", "--out", "out"], "cannot use nosuchproto:// URLs"),
])  # fmt: skip
def test_unusable_urls_are_one_line(args, message, tmp_path):
    proc = run_cli(*args, check=False, prefix=["sh", "-c", 'cd "$0" && exec "$@"', str(tmp_path)])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_scrub():
    from avprep.remote import scrub

    assert scrub("https://u:p@h/x.mp4?X-Amz-Signature=abc&X-Amz-Credential=k&v=1") == (
        "https://h/x.mp4?X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED&v=1"
    )
    assert scrub("s3://bucket/key.mp4") == "s3://bucket/key.mp4"
    assert (
        scrub("failed: GET https://a:b@h/y?sig=1 500") == "failed: GET https://h/y?sig=REDACTED 500"
    )


def test_remote_file_reads_as_a_local_file(s3, videos):
    """Seeks and reads of RemoteFile give the object's bytes (tarfile and PyAV rely on it)."""
    from avprep.remote import RemoteFile

    data = (videos / "clip00.mp4").read_bytes()
    s3.pipe_file(f"{BUCKET}/rf/clip.mp4", data)
    f = RemoteFile(f"s3://{BUCKET}/rf/clip.mp4", block_bytes=4096)
    assert f.read(10) == data[:10]
    f.seek(-100, io.SEEK_END)
    assert f.read() == data[-100:]
    f.seek(5000)
    assert f.read(7000) == data[5000:12000] and f.tell() == 12000
    f.close()
