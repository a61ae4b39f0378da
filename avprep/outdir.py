"""The output directory's state: the per-rank lock, runs, and resume.

Resume rule: an input is done when an ok row with its ``input_key`` is committed
(its shard was renamed into place before the row was written). Everything else of this rank is
redone: temporary shards are deleted, shards committed without their manifest
part (a kill between the two renames) get their rows rebuilt from the tar, and
this rank's earlier skipped/failed rows are dropped so those inputs are tried
again and recorded exactly once.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import tarfile
from pathlib import Path

from avprep import manifest, schema
from avprep.config import ShardConfig
from avprep.errors import UsageError

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


class OutputDir:
    def __init__(self, root: str | Path, rank: int) -> None:
        self.root = Path(root)
        self.rank = rank
        self.manifest = manifest.manifest_dir(self.root)
        self.state = self.root / STATE_DIR
        self._lock_fd: int | None = None
        self.run = 0
        self.paths: dict[str, str] = {}  # input_key -> real path, for rows rebuilt from shards
        self.notices: list[str] = []  # one line per manifest part rebuilt from its shard

    def open(self, cfg: ShardConfig) -> None:
        """Create, lock this rank, check settings, pick this run's number, clean up."""
        try:
            self.manifest.mkdir(parents=True, exist_ok=True)
            self.state.mkdir(exist_ok=True)
            probe = self.state / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UsageError(f"cannot write to {self.root}: {e.strerror or e}") from e
        self._lock()
        self._check_config(cfg)
        self.run = self._next_run()
        self._clean_temporaries()

    def _lock(self) -> None:
        path = self.state / f"lock-r{self.rank:04d}"
        self._lock_fd = try_lock(path)
        if self._lock_fd is None:
            raise UsageError(
                f"rank {self.rank} is already running on {self.root} (lock {path}); "
                "wait for it or give another --rank"
            )

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_config(self, cfg: ShardConfig) -> None:
        path = self.state / CONFIG_FILE
        # world_size too: ranks of another world size own other inputs (each once only here)
        want = {
            "schema_version": schema.SCHEMA_VERSION,
            "manifest_version": MANIFEST_VERSION,
            **cfg.content_dict(),
            "world_size": cfg.world_size,
        }
        if path.exists():
            have = json.loads(path.read_text())
            diff = sorted(k for k in want if have.get(k) != want[k])
            if diff:
                shown = ", ".join(f"{k}={have.get(k)!r} (now {want[k]!r})" for k in diff)
                raise UsageError(
                    f"{self.root} holds shards made with other settings: {shown}; "
                    "use a new --out or the same settings"
                )
            return
        tmp = path.with_name(f"{path.name}.{os.getpid()}{schema.TMP_SUFFIX}")
        tmp.write_text(json.dumps(want, indent=1))
        os.replace(tmp, path)

    def _mine(self, pattern: str) -> list[Path]:
        return sorted(self.root.glob(pattern))

    def _next_run(self) -> int:
        runs = [0]
        for p in self.root.glob(f"{schema.SHARD_PREFIX}-r{self.rank:04d}-*"):
            parsed = schema.parse_shard_stem(p.name.split(".")[0])
            if parsed:
                runs.append(parsed[1])
        for p in self.manifest.glob(f"other-r{self.rank:04d}-*.parquet"):
            m = re.match(r"other-r\d+-(\d+)\.parquet$", p.name)
            if m:
                runs.append(int(m.group(1)))
        return max(runs) + 1

    def _clean_temporaries(self) -> None:
        prefix = f"{schema.SHARD_PREFIX}-r{self.rank:04d}-"
        for tmp in self.root.glob(f"{prefix}*{schema.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
        for tmp in self.manifest.glob(f".*r{self.rank:04d}-*{schema.TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)

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
        for tar in sorted(self.root.glob(pattern)):
            part = self.manifest / f"{tar.stem}.parquet"
            table = None
            if part.exists():
                try:
                    table = manifest.read_part(part)
                except manifest.DamagedPart as e:
                    self.notices.append(f"{e}; rebuilt from {tar.name}")
            if table is None:
                rows = self._rows_from_shard(tar)
                manifest.write_part(part, rows)
                table = manifest.read_part(part)
            ids.update(table.column("video_id").to_pylist())
        return ids

    def _rows_from_shard(self, tar: Path) -> list[dict]:
        parsed = schema.parse_shard_stem(tar.stem)
        run = parsed[1] if parsed else 0
        try:
            rows = manifest.rows_from_shard(tar, rank=self.rank, run=run, paths=self.paths)
            why = "" if rows else "it holds no samples"
        except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as e:
            rows, why = [], str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not rows:
            raise UsageError(
                f"cannot rebuild the manifest part of {tar} from it: {why}; "
                "move the shard away to shard its videos again"
            )
        return rows

    def recover_worker(self, worker_id: int) -> set[str]:
        """Recover one (dead) worker of this run; the video ids it committed."""
        stem = schema.shard_stem(self.rank, self.run, worker_id, 0).rsplit("-", 1)[0]
        return self.recover_orphans(f"{stem}-*{schema.SHARD_SUFFIX}")

    def drop_other_rows(self) -> None:
        """Forget this rank's skipped/failed rows: those inputs are tried again."""
        for part in self.manifest.glob(f"other-r{self.rank:04d}-*.parquet"):
            part.unlink()

    def committed_inputs(self) -> dict[str, str]:
        """input_key -> video_id of every input with a committed ok row (any rank)."""
        table = manifest.read(self.root)
        rows = zip(
            table.column("input_key").to_pylist(),
            table.column("video_id").to_pylist(),
            table.column("status").to_pylist(),
            strict=True,
        )
        return {key: vid for key, vid, status in rows if status == manifest.OK}

    def other_part(self) -> Path:
        return self.manifest / f"other-r{self.rank:04d}-{self.run:03d}.parquet"

    def worker_temporaries(self, worker_id: int) -> list[Path]:
        stem = schema.shard_stem(self.rank, self.run, worker_id, 0).rsplit("-", 1)[0]
        return list(self.root.glob(f"{stem}-*{schema.TMP_SUFFIX}"))
