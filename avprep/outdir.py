"""The output directory's state: the per-rank lock, runs, and resume.

Resume rule: an input is done when an ok row with its ``input_key`` is committed
(its shard was renamed into place before the row was written). Everything else of this rank is
redone: temporary shards are deleted, shards committed without their manifest
part (a kill between the two renames) get their rows rebuilt from the tar, and
this rank's earlier skipped/failed rows are dropped so those inputs are tried
again and recorded exactly once.

The folder is a store: ``LocalStore`` here (temporaries beside the shards, renamed into
place), or ``avprep.remote_store.RemoteStore`` for a URL (temporaries in a local staging
folder, each uploaded whole under its final name: an object store's PUT or multipart
upload completes atomically). The rules above are the same for both.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from avprep import manifest, schema
from avprep.config import ShardConfig
from avprep.errors import UsageError
from avprep.urls import remote_scheme
from avprep.writer import fsync_rename

STATE_DIR = ".avprep"
CONFIG_FILE = "shard-config.json"
# 2: manifest rows carry input_key, the identity resume goes by (1 went by video id)
MANIFEST_VERSION = 2


def try_lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (created), held while the returned fd is open;
    None if another process holds it. The fd records who holds it.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so
    the processes it forks (data-loader workers) do not inherit it, and it goes the
    moment this process dies, even while orphaned workers linger. (Take each lock once
    per process: closing any fd of the file releases it.)"""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:  # EAGAIN or EACCES: another process holds it
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.uname().nodename} {os.getpid()}\n".encode())
    return fd


class LocalStore:
    """An output folder on this machine's file system; names are relative to ``root``
    (``shard-....tar``, ``manifest/x.parquet``, ``.avprep/...``)."""

    remote = False

    def __init__(self, root: str | Path, rank: int = 0) -> None:
        self.root = Path(root)
        self.shown = str(root)
        self.rank = rank
        self.staging = self.root  # temporary shards are written beside the final ones
        self.spool = self.root / STATE_DIR / f"spool-r{rank:04d}"  # local copies of URL inputs

    def prepare(self) -> None:
        try:
            (self.root / schema.MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / STATE_DIR).mkdir(exist_ok=True)
            probe = self.root / STATE_DIR / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write to {self.root}: {e.strerror or e}") from e

    def lock(self) -> Callable[[], None]:
        """Hold this rank's lock; returns what releases it. UsageError if it is held."""
        path = self.root / STATE_DIR / f"lock-r{self.rank:04d}"
        fd = try_lock(path)
        if fd is None:
            raise UsageError(
                f"rank {self.rank} is already running on {self.root} (lock {path}); "
                "wait for it or give another --rank"
            )
        return lambda: os.close(fd)

    def list(self, pattern: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern))

    def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self.root / name
        tmp = path.with_name(f"{path.name}.{os.getpid()}{schema.TMP_SUFFIX}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def publish(self, tmp: Path, name: str) -> None:
        """Put the complete local file ``tmp`` in place as ``name`` (gone from ``tmp``)."""
        fsync_rename(tmp, self.root / name)

    def write_part(self, name: str, rows: list[dict]) -> None:
        manifest.write_part(self.root / name, rows)

    def read_part(self, name: str):
        return manifest.read_part(self.root / name)

    def open(self, name: str):
        return open(self.root / name, "rb")

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def where(self, name: str) -> str:
        return str(self.root / name)

    def clean_temporaries(self) -> None:
        prefix = f"{schema.SHARD_PREFIX}-r{self.rank:04d}-"
        for tmp in self.root.glob(f"{prefix}*{schema.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        for tmp in (self.root / schema.MANIFEST_DIR).glob(
            f".*r{self.rank:04d}-*{schema.TMP_SUFFIX}"
        ):
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.spool, ignore_errors=True)

    def clean_worker(self, worker_id: int, stem: str) -> None:
        """Drop what a dead worker left: its temporary shards (``stem``: its names' start)."""
        for tmp in self.staging.glob(f"{stem}-*{schema.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

    def read_manifest(self):
        return manifest.read(self.root)

    def close(self) -> None:
        pass


def open_store(root: str | Path, rank: int = 0):
    """The store of an output folder or URL."""
    if remote_scheme(str(root)):
        from avprep.remote_store import RemoteStore  # noqa: PLC0415

        return RemoteStore(str(root), rank)
    return LocalStore(root, rank)


class OutputDir:
    def __init__(self, root: str | Path, rank: int) -> None:
        self.store = open_store(root, rank)
        self.root = self.store.shown
        self.rank = rank
        self._unlock: Callable[[], None] | None = None
        self.run = 0
        self.paths: dict[str, str] = {}  # input_key -> real path, for rows rebuilt from shards
        self.notices: list[str] = []  # one line per manifest part rebuilt from its shard

    def open(self, cfg: ShardConfig) -> None:
        """Create, lock this rank, check settings, pick this run's number, clean up."""
        self.store.prepare()
        self._unlock = self.store.lock()
        try:
            self._check_config(cfg)
            self.run = self._next_run()
            self.store.clean_temporaries()
        except BaseException:
            self.close()  # a remote rank's lease goes at once, not when it lapses
            raise

    def close(self) -> None:
        if self._unlock is not None:
            self._unlock()
            self._unlock = None
        self.store.close()

    def _check_config(self, cfg: ShardConfig) -> None:
        name = f"{STATE_DIR}/{CONFIG_FILE}"
        # world_size too: ranks of another world size own other inputs (each once only here)
        want = {
            "schema_version": schema.SCHEMA_VERSION,
            "manifest_version": MANIFEST_VERSION,
            **cfg.content_dict(),
            "world_size": cfg.world_size,
        }
        if self.store.exists(name):
            have = json.loads(self.store.read_bytes(name))
            diff = sorted(k for k in want if have.get(k) != want[k])
            if diff:
                shown = ", ".join(f"{k}={have.get(k)!r} (now {want[k]!r})" for k in diff)
                if "schema_version" in diff:
                    raise UsageError(
                        f"{self.root} holds schema v{have.get('schema_version')} shards and this avprep "
                        f"writes v{want['schema_version']}: use a new --out (readers take both; "
                        "avprep.read_sample.convert_shard rewrites a shard as v2)"
                    )
                raise UsageError(
                    f"{self.root} holds shards made with other settings: {shown}; "
                    "use a new --out or the same settings"
                )
            return
        self.store.write_bytes(name, json.dumps(want, indent=1).encode())

    def _next_run(self) -> int:
        runs = [0]
        for name in self.store.list(f"{schema.SHARD_PREFIX}-r{self.rank:04d}-*"):
            parsed = schema.parse_shard_stem(name.split(".")[0])
            if parsed:
                runs.append(parsed[1])
        for name in self.store.list(f"{schema.MANIFEST_DIR}/other-r{self.rank:04d}-*.parquet"):
            m = re.match(r"other-r\d+-(\d+)\.parquet$", name.rsplit("/", 1)[-1])
            if m:
                runs.append(int(m.group(1)))
        return max(runs) + 1

    def take_over(self, paths: dict[str, str]) -> dict[str, str]:
        """Everything a run does with what earlier runs left, before it starts: the manifest
        parts of this rank's committed shards rebuilt where missing or damaged
        (``recover_orphans``: a line in ``notices`` each; ``paths``, input_key -> real path,
        fills their rows), this rank's skipped and failed rows forgotten (those inputs are
        tried again), and the result: input_key -> video_id of every input with a committed
        ok row (any rank)."""
        self.paths = paths
        self.recover_orphans()
        self.drop_other_rows()
        return self.committed_inputs()

    def recover_orphans(self, pattern: str | None = None) -> set[str]:
        """Write the manifest parts of this rank's committed shards that are missing or
        damaged (not Parquet, another schema, rows of another shard), rebuilt from the
        tar; each damaged one adds a line to ``notices``. UsageError naming the tar if it
        cannot be read either.

        Returns the video ids in the shards matched by ``pattern`` (default: all
        of this rank's shards).
        """
        pattern = pattern or f"{schema.SHARD_PREFIX}-r{self.rank:04d}-*{schema.SHARD_SUFFIX}"
        ids: set[str] = set()
        parts = set(self.store.list(f"{schema.MANIFEST_DIR}/*.parquet"))
        for tar in self.store.list(pattern):
            part = f"{schema.MANIFEST_DIR}/{tar.removesuffix(schema.SHARD_SUFFIX)}.parquet"
            table = None
            if part in parts:
                try:
                    table = self.store.read_part(part)
                except manifest.DamagedPart as e:
                    self.notices.append(f"{e}; rebuilt from {tar}")
            if table is None:
                rows = self._rows_from_shard(tar)
                self.store.write_part(part, rows)
                table = self.store.read_part(part)
            ids.update(table.column("video_id").to_pylist())
        return ids

    def _rows_from_shard(self, tar: str) -> list[dict]:
        parsed = schema.parse_shard_stem(tar.removesuffix(schema.SHARD_SUFFIX))
        run = parsed[1] if parsed else 0
        try:
            with self.store.open(tar) as f:
                rows = manifest.rows_from_shard(tar, rank=self.rank, run=run, paths=self.paths,
                                                fileobj=f)  # fmt: skip
            why = "" if rows else "it holds no samples"
        except Exception as e:  # OSError, TarError, ValueError, KeyError, TypeError, remote
            rows, why = [], str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not rows:
            raise UsageError(
                f"cannot rebuild the manifest part of {self.store.where(tar)} from it: {why}; "
                "move the shard away to shard its videos again"
            )
        return rows

    def _worker_stem(self, worker_id: int) -> str:
        return schema.shard_stem(self.rank, self.run, worker_id, 0).rsplit("-", 1)[0]

    def recover_worker(self, worker_id: int) -> set[str]:
        """Recover one (dead) worker of this run; the video ids it committed."""
        return self.recover_orphans(f"{self._worker_stem(worker_id)}-*{schema.SHARD_SUFFIX}")

    def drop_other_rows(self) -> None:
        """Forget this rank's skipped/failed rows: those inputs are tried again."""
        for name in self.store.list(f"{schema.MANIFEST_DIR}/other-r{self.rank:04d}-*.parquet"):
            self.store.delete(name)

    def committed_inputs(self) -> dict[str, str]:
        """input_key -> video_id of every input with a committed ok row (any rank)."""
        table = self.store.read_manifest()
        rows = zip(
            table.column("input_key").to_pylist(),
            table.column("video_id").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        )
        return {key: vid for key, vid, status in rows if status == manifest.OK}

    def write_other_rows(self, rows: list[dict]) -> None:
        self.store.write_part(
            f"{schema.MANIFEST_DIR}/other-r{self.rank:04d}-{self.run:03d}.parquet", rows
        )

    def clean_worker(self, worker_id: int) -> None:
        """Drop the temporaries a dead worker left."""
        self.store.clean_worker(worker_id, self._worker_stem(worker_id))
