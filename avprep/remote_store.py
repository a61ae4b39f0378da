"""An ``avprep shard --out`` that is a URL (``s3://bucket/prefix``): the same names and
rules as a local output folder (``outdir.LocalStore``), through fsspec. ``avprep embed
--out URL`` writes its Parquet parts through the same store (``cmac_core.embed.remote_table``:
``publish``, the lease, ``clean_temporaries`` of its own names).

Commit: a shard is written to a local staging folder under a temporary name, then
uploaded under its final name in one request (a PUT, or a multipart upload for large
files, which S3, GCS and Azure make visible only once complete); its manifest part
likewise, after it. A reader listing ``*.tar`` never sees half a shard, and a kill
between the two uploads is repaired on resume as on disk (the part rebuilt from the tar).
Protocols that are not object stores (``sftp://``, ``hdfs://``...) get a hidden
temporary name and a rename instead.

Staging: ``$AVPREP_STAGING_DIR`` (default: the system's temporary folder)
``/avprep-staging-<hash of the URL>-r<rank>``: one open shard per worker and the spool
copies of remote inputs that need one; emptied when the rank starts and removed when it
ends.

Lock: an object store has no file lock. Each rank holds a lease, the object
``.avprep/lock-rNNNN`` (host, process, renewal time), renewed every
``LEASE_S`` / 4 s by a thread. Another run of the rank is refused while the lease is
fresh; on the same host a lease whose process is gone is taken over at once (a kill -9
and the same command resumes). ``$AVPREP_REMOTE_LEASE_S`` sets the lease (default 60 s).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from avprep import manifest, remote, schema
from avprep.errors import UsageError
from avprep.remote import StoreError, scrub

STATE_DIR = ".avprep"  # outdir.STATE_DIR (not imported: outdir imports this module lazily)
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hf", "memory", "oss"}


def _lease_s() -> float:
    return max(1.0, float(os.environ.get("AVPREP_REMOTE_LEASE_S", "60")))


def _start_ticks(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (pid reuse tells apart)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RemoteStore:
    """An output URL; names are relative to it (``shard-....tar``, ``manifest/x.parquet``)."""

    remote = True

    def __init__(self, url: str, rank: int = 0) -> None:
        self.url = url.rstrip("/")
        self.shown = scrub(self.url)
        self.rank = rank
        self.fs, self.base = remote.filesystem(self.url)
        self.base = self.base.rstrip("/")
        self.protocol = (self.url.split("://", 1)[0]).lower()
        self.atomic_put = self.protocol in ATOMIC_PUT
        digest = hashlib.sha1(remote.canonical(self.url).encode()).hexdigest()[:12]
        root = Path(os.environ.get("AVPREP_STAGING_DIR") or tempfile.gettempdir())
        self.staging = root / f"avprep-staging-{digest}-r{rank:04d}"
        self.spool = self.staging / "spool"
        self._lease: _Lease | None = None

    # -- names ----------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        return f"{self.base}/{name}"

    def where(self, name: str) -> str:
        return f"{self.shown}/{name}"

    def _do(self, what: str, call: Callable):
        try:
            return remote.retry(call)
        except remote.RemoteFailure as e:
            raise StoreError(f"cannot {what} {self.shown}: {e.reason}") from None

    # -- reading --------------------------------------------------------------------------
    def list(self, pattern: str) -> list[str]:
        """Names matching ``pattern`` (a glob relative to the URL, one folder level)."""
        folder, _, glob = pattern.rpartition("/")
        where = self._path(folder) if folder else self.base

        def ls() -> list[str]:
            self.fs.invalidate_cache(where)  # other processes (workers, ranks) write here
            try:
                return self.fs.ls(where, detail=False)
            except FileNotFoundError:
                return []

        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self._do("list", ls)]
        found = [n for n in names if fnmatch.fnmatchcase(n, glob) and not n.startswith(".")]
        return sorted(f"{folder}/{n}" if folder else n for n in found)

    def exists(self, name: str) -> bool:
        def check() -> bool:
            self.fs.invalidate_cache(self._path(name))
            return self.fs.exists(self._path(name))

        return self._do("read", check)

    def read_bytes(self, name: str) -> bytes:
        return self._do("read", lambda: self.fs.cat_file(self._path(name)))

    def open(self, name: str):
        try:
            return remote.RemoteFile(self.fs.unstrip_protocol(self._path(name)))
        except remote.RemoteFailure as e:
            raise StoreError(f"cannot read {self.where(name)}: {e.reason}") from None

    def read_part(self, name: str) -> pa.Table:
        return manifest.read_part(self.where(name), self.read_bytes(name))

    def read_manifest(self) -> pa.Table:
        """Every committed row under ``URL/manifest`` (manifest.read's checks)."""
        names = self.list(f"{schema.MANIFEST_DIR}/*.parquet")
        if not names:
            return manifest.empty()
        paths = [self._path(n) for n in names]
        data = self._do("read", lambda: self.fs.cat(paths, on_error="raise"))
        blobs = [data[p] if p in data else data[self.fs.unstrip_protocol(p)] for p in paths]
        tables = []
        for name, blob in zip(names, blobs, strict=True):
            try:
                tables.append(manifest.read_part(self.where(name), blob))
            except manifest.DamagedPart as e:
                raise manifest.DamagedPart(
                    self.where(name), f"{e.why}; {manifest.repair_hint(name)}"
                ) from None
        table = pa.concat_tables(tables)
        if not manifest.check_together(table):  # an input in two parts
            raise manifest.DamagedPart(self.where(schema.MANIFEST_DIR),
                                       "an input recorded in two parts")  # fmt: skip
        return table

    # -- writing --------------------------------------------------------------------------
    def prepare(self) -> None:
        probe = f"{STATE_DIR}/.write-test-{socket.gethostname()}-{os.getpid()}"
        try:
            remote.retry(lambda: self.fs.pipe_file(self._path(probe), b""))
        except remote.RemoteFailure as e:
            why = "its bucket does not exist" if e.kind == remote.MISSING else e.reason
            raise StoreError(f"cannot write to {self.shown}: {why}") from None
        self._do("write to", lambda: self._rm(self._path(probe)))

    def _rm(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.atomic_put:
            self._do("write to", lambda: self.fs.pipe_file(self._path(name), data))
            return
        tmp = self._hidden_tmp(name)
        self._do("write to", lambda: self.fs.pipe_file(tmp, data))
        self._do("write to", lambda: self.fs.mv(tmp, self._path(name)))

    def _hidden_tmp(self, name: str) -> str:
        folder, _, base = name.rpartition("/")
        hidden = f".{base}.{uuid.uuid4().hex[:8]}{schema.TMP_SUFFIX}"
        return self._path(f"{folder}/{hidden}" if folder else hidden)

    def publish(self, tmp: Path, name: str) -> None:
        """Upload the complete local file ``tmp`` as ``name`` (whole or not at all), then
        delete ``tmp``."""
        if self.atomic_put:
            self._do("write to", lambda: self.fs.put_file(str(tmp), self._path(name)))
        else:
            hidden = self._hidden_tmp(name)
            self._do("write to", lambda: self.fs.put_file(str(tmp), hidden))
            self._do("write to", lambda: self.fs.mv(hidden, self._path(name)))
        Path(tmp).unlink(missing_ok=True)

    def write_part(self, name: str, rows: list[dict]) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        tmp = self.staging / f".{name.rsplit('/', 1)[-1]}.{os.getpid()}{schema.TMP_SUFFIX}"
        manifest.write_table(tmp, rows)
        self.publish(tmp, name)

    def delete(self, name: str) -> None:
        self._do("delete from", lambda: self._rm(self._path(name)))

    def clean_temporaries(self, start: str | None = None) -> None:
        """What a killed run of this rank left: its staging folder, its hidden temporaries
        (renaming protocols), its unfinished multipart uploads (S3), of the objects whose
        names begin with ``start`` (default: this rank's shards, ``shard-rNNNN-``). Made
        here, once the rank's lease is held (a run refused leaves nothing behind)."""
        if start is None:
            start = f"{schema.SHARD_PREFIX}-r{self.rank:04d}-"
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot make the staging folder {self.staging}: {e.strerror or e}"
            ) from e
        for p in self.staging.glob("*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if not self.atomic_put:
            for name in self._hidden(start):
                self.delete(name)
        self._abort_uploads(start)

    def _hidden(self, start: str) -> list[str]:
        names = []
        for folder in ("", schema.MANIFEST_DIR):
            where = self._path(folder) if folder else self.base
            try:
                found = self.fs.ls(where, detail=False)
            except (FileNotFoundError, OSError):
                continue
            for p in found:
                n = p.rstrip("/").rsplit("/", 1)[-1]
                if n.startswith("." + start) or (folder and n.startswith(".") and
                                                 f"r{self.rank:04d}-" in n):  # fmt: skip
                    names.append(f"{folder}/{n}" if folder else n)
        return names

    def _abort_uploads(self, start: str) -> None:
        """Abort S3 multipart uploads of this rank's shards that a kill left unfinished
        (invisible, but billed). Best effort: other stores clean up themselves."""
        if self.protocol not in ("s3", "s3a") or not hasattr(self.fs, "call_s3"):
            return
        bucket, _, key = self.base.partition("/")
        prefix = f"{key}/{start}" if key else start
        try:
            listed = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
            for up in listed.get("Uploads", []):
                self.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"],
                                UploadId=up["UploadId"])  # fmt: skip
        except Exception:  # no permission to list them: they expire by the bucket's rules
            pass

    def clean_worker(self, worker_id: int, stem: str) -> None:
        for tmp in self.staging.glob(f"{stem}-*{schema.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.spool / f"w{worker_id:02d}", ignore_errors=True)
        self._abort_uploads(f"{stem}-")

    # -- the rank's lease -------------------------------------------------------------------
    def lock(self, name: str | None = None) -> Callable[[], None]:
        """Hold this rank's lease, the object ``name`` (default ``.avprep/lock-rNNNN``);
        returns what releases it. LeaseHeld while another run holds it."""
        self._lease = _Lease(self, name or f"{STATE_DIR}/lock-r{self.rank:04d}")
        self._lease.acquire()
        return self._lease.release

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class LeaseHeld(UsageError):
    """Another run holds the lease: ``holder`` (host, pid), ``age_s`` since its renewal."""

    def __init__(self, message: str, *, holder: str, age_s: float, lease_s: float) -> None:
        super().__init__(message)
        self.holder, self.age_s, self.lease_s = holder, age_s, lease_s


class _Lease:
    """This rank's lock on an object store: an object renewed by a thread."""

    def __init__(self, store: RemoteStore, name: str) -> None:
        self.store, self.name = store, name
        self.token = uuid.uuid4().hex
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "start": _start_ticks(os.getpid()), "token": self.token}  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            if not self.store.exists(self.name):
                return None
            return json.loads(self.store.read_bytes(self.name))
        except (ValueError, StoreError):
            return None

    def _write(self) -> None:
        self.store.write_bytes(self.name, json.dumps({**self.me, "renewed": time.time()}).encode())

    def _gone(self, held: dict) -> bool:
        """Whether the holder is a process of this host that no longer runs."""
        if held.get("host") != socket.gethostname():
            return False
        pid = held.get("pid")
        return not isinstance(pid, int) or _start_ticks(pid) != held.get("start")

    def acquire(self) -> None:
        lease = _lease_s()
        held = self._read()
        if held is not None and held.get("token") != self.token and not self._gone(held):
            age = time.time() - float(held.get("renewed") or 0)
            if age < lease:
                self._refuse(held, age, lease)
        self._write()
        time.sleep(min(0.5, lease / 10))  # two starting at once: the last writer holds it
        held = self._read()
        if held is not None and held.get("token") != self.token:
            self._refuse(held, 0.0, lease)
        self._thread = threading.Thread(target=self._renew, name="avprep-lease", daemon=True)
        self._thread.start()

    def _refuse(self, held: dict, age: float, lease: float) -> None:
        holder = f"{held.get('host')} pid {held.get('pid')}"
        raise LeaseHeld(
            f"rank {self.store.rank} is already running on {self.store.shown} (lock "
            f"{self.store.where(self.name)}: {holder}, renewed "
            f"{age:.0f} s ago); wait for it, or for its lease to lapse ({lease:.0f} s), or "
            "give another --rank",
            holder=holder, age_s=age, lease_s=lease,
        )  # fmt: skip

    def _renew(self) -> None:
        while not self._stop.wait(_lease_s() / 4):
            try:
                held = self._read()
                if held is not None and held.get("token") != self.token:
                    return  # taken over after our lease lapsed: the other run goes on
                self._write()
            except Exception:  # a failed renewal: the next one tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self._read()
            if held is not None and held.get("token") == self.token:
                self.store.delete(self.name)
        except StoreError:
            pass  # it lapses
