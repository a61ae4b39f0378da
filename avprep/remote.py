"""Remote storage through fsspec: one filesystem per URL, credentials scrubbed from what is
shown, retries with backoff, and a seekable file that PyAV reads while it downloads.

Any protocol whose fsspec package is installed works (``s3://`` with s3fs, ``gs://`` with
gcsfs, ``hf://`` with huggingface_hub, ``http(s)://`` with aiohttp). Credentials come
from the environment and each library's own configuration (``AWS_ACCESS_KEY_ID``,
``~/.aws``, ``AWS_ENDPOINT_URL`` for an S3-compatible store, ``GOOGLE_APPLICATION_CREDENTIALS``,
``HF_TOKEN``, fsspec's ``FSSPEC_S3_*`` variables); never from the command line. What
avprep shows or records of a URL (messages, manifest ``source``/``path``, sample json) has
its ``user:password@`` and credential-bearing query parameters (presigned URLs) blanked.

Errors are sorted into permanent ones (not found, access denied: one try) and transient
ones (connection errors, timeouts, HTTP 5xx, 408 and 429, S3's SlowDown: retried with
exponential backoff). ``AVPREP_REMOTE_TRIES`` (default 6) and ``AVPREP_REMOTE_BACKOFF_S``
(default 0.5, doubled per try up to 16 x) tune them; ``AVPREP_REMOTE_BLOCK_BYTES`` (default
8 MiB) is what one ranged read fetches.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from avprep.errors import MediaError, UsageError
from avprep.urls import remote_scheme

T = TypeVar("T")

BLOCK_BYTES = (
    8 * 1024**2
)  # what one ranged GET fetches while PyAV reads (AVPREP_REMOTE_BLOCK_BYTES)
MISSING, DENIED, TRANSIENT, ERROR, NO_RANGES = (
    "missing",
    "denied",
    "transient",
    "error",
    "no_ranges",
)

# -- what is shown ------------------------------------------------------------------------

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#\s]*@")
_SECRET_PARAM = re.compile(
    r"([?&](?:[^=&#\s]*(?:signature|credential|token|secret|password|passwd|apikey|api_key|"
    r"access_key|sig|auth|key-pair-id|policy))=)[^&#\s]*",
    re.IGNORECASE,
)


def scrub(text: str) -> str:
    """``text`` (a URL, or a message naming URLs) with credentials blanked: a URL's
    ``user:password@`` dropped, the values of credential query parameters (a presigned
    URL's ``X-Amz-Signature``, ``X-Amz-Credential``, ``token``, ``sig``) made ``REDACTED``."""
    text = _USERINFO.sub(r"\1", str(text))
    return _SECRET_PARAM.sub(r"\1REDACTED", text)


def one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0] or type(e).__name__
    return scrub(text)[:240]


# -- filesystems --------------------------------------------------------------------------


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of ``url``; UsageError in one line when fsspec
    or the protocol's package is not installed."""
    scheme = remote_scheme(url) or "file"
    try:
        import fsspec  # noqa: PLC0415
    except ImportError:
        raise UsageError(f"{scheme}:// URLs need fsspec: pip install 'avprep[remote]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:  # fsspec names the package: "Install s3fs to access S3"
        raise UsageError(f"{scheme}:// URLs need another package: {one_line(e)}") from None
    except ValueError as e:  # "Protocol not known: xyz"
        raise UsageError(f"cannot use {scheme}:// URLs: {one_line(e)}") from None


def join(base: str, rel: str) -> str:
    """``base`` URL (a folder) and a relative path below it."""
    return base.rstrip("/") + "/" + rel.lstrip("/")


def parent(url: str) -> str:
    """The folder URL a URL's file is in (``s3://b/x/m.csv`` -> ``s3://b/x``)."""
    head, _, query = url.partition("?")
    return head.rsplit("/", 1)[0] if head.count("/") > 2 else head


def canonical(url: str) -> str:
    """One spelling per object (for identity): the protocol's own form of the path,
    credentials scrubbed."""
    try:
        fs, path = filesystem(url)
        return scrub(fs.unstrip_protocol(path))
    except UsageError:
        return scrub(url)


# -- errors and retries -------------------------------------------------------------------


def classify(e: BaseException) -> str:
    """MISSING, DENIED, NO_RANGES, TRANSIENT (worth another try) or ERROR."""
    status = getattr(e, "status", None)  # aiohttp's ClientResponseError (fsspec's http)
    if isinstance(status, int):
        if status in (404, 410):
            return MISSING
        if status in (401, 403):
            return DENIED
        return TRANSIENT if status in (408, 425, 429) or status >= 500 else ERROR
    if isinstance(e, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return MISSING
    if isinstance(e, PermissionError):
        return DENIED
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return DENIED
    if isinstance(e, ValueError) and "range requests" in str(e):
        return NO_RANGES  # fsspec's http: a server that ignores Range
    if isinstance(e, OSError | EOFError):  # s3fs maps unknown S3 errors (SlowDown, 500) here
        return TRANSIENT
    if any(w in name for w in ("Timeout", "Connection", "Disconnected", "Payload", "Incomplete",
                                "ClientError", "ServerError")):  # fmt: skip
        return TRANSIENT  # aiohttp's and botocore's network errors
    return ERROR


class StoreError(UsageError):
    """A remote output (``--out`` URL) that cannot be written or read after its retries:
    the run stops in one line and resumes later."""


@dataclass
class RemoteFailure(Exception):
    """A remote operation that failed for good: ``kind`` (classify) and a one-line ``reason``
    fit for a manifest row."""

    kind: str
    reason: str

    def __str__(self) -> str:
        return self.reason

    def media_error(self) -> MediaError:
        return MediaError(self.reason)


def tries() -> int:
    return max(1, int(os.environ.get("AVPREP_REMOTE_TRIES", "6")))


def backoff_s(attempt: int) -> float:
    base = float(os.environ.get("AVPREP_REMOTE_BACKOFF_S", "0.5"))
    return base * min(2**attempt, 16) * random.uniform(0.75, 1.25)


def reason_for(kind: str, e: BaseException, attempts: int) -> str:
    if kind == MISSING:
        return "missing: no such object"
    if kind == DENIED:
        return f"access denied: {one_line(e)}"
    if kind == NO_RANGES:
        return "remote: the server does not serve byte ranges"
    after = f" (after {attempts} tries)" if attempts > 1 else ""
    return f"remote: {type(e).__name__}: {one_line(e)}{after}"[:300]


def retry(call: Callable[[], T], *, on_retry: Callable[[], None] | None = None) -> T:
    """``call()``, tried again after transient errors with exponential backoff;
    RemoteFailure once an error is permanent or the tries are spent."""
    n = tries()
    for attempt in range(n):
        try:
            return call()
        except RemoteFailure:
            raise
        except Exception as e:
            kind = classify(e)
            if kind != TRANSIENT or attempt == n - 1:
                raise RemoteFailure(kind, reason_for(kind, e, attempt + 1)) from e
        time.sleep(backoff_s(attempt))
        if on_retry is not None:
            with contextlib.suppress(Exception):  # reopening failed: the next try says why
                on_retry()
    raise AssertionError("unreachable")


# -- reading ------------------------------------------------------------------------------


def stat(url: str) -> dict[str, Any]:
    """fsspec's ``info`` of ``url`` (``type``, ``size``), retried; RemoteFailure if it
    cannot be had (MISSING for a folder: only files are read this way)."""
    fs, path = filesystem(url)
    info = retry(lambda: fs.info(path))
    if info.get("type") == "directory":
        raise RemoteFailure(MISSING, "missing: a folder, not a file")
    return info


class RemoteFile(io.RawIOBase):
    """A seekable, read-only view of a remote object that PyAV (or tarfile) reads: each
    read fetches blocks of ``BLOCK_BYTES`` through fsspec, and a transient failure reopens
    the object at the same offset and tries again.

    It never raises into its reader (PyAV drops exceptions raised in its callbacks and
    reads on): a read that fails for good records ``failure`` and reads as end of file.
    Whoever decodes checks ``failure`` when the data ends.
    """

    def __init__(self, url: str, size: int | None = None, *, block_bytes: int | None = None):
        super().__init__()
        if block_bytes is None:
            block_bytes = int(os.environ.get("AVPREP_REMOTE_BLOCK_BYTES") or BLOCK_BYTES)
        self.url = url
        self.fs, self.fpath = filesystem(url)
        self.size = stat(url).get("size") if size is None else size
        self.block_bytes = block_bytes
        self.failure: RemoteFailure | None = None
        self._pos = 0
        self._f = None
        retry(self._reopen)

    def _reopen(self) -> None:
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None
        try:
            self._f = self.fs.open(self.fpath, "rb", block_size=self.block_bytes,
                                   cache_type="readahead", size=self.size)  # fmt: skip
        except TypeError:  # a filesystem whose files take no block or cache options
            self._f = self.fs.open(self.fpath, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = (self.size or 0) + offset
        else:
            raise ValueError(f"whence {whence}")
        self._pos = max(0, pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if self.failure is not None or self.closed:
            return b""
        if n is None or n < 0:
            n = max(0, (self.size or 0) - self._pos)
        if self.size is not None:
            n = min(n, max(0, self.size - self._pos))
        if n == 0:
            return b""

        def fetch() -> bytes:
            self._f.seek(self._pos)
            return self._f.read(n)

        try:
            data = retry(fetch, on_retry=self._reopen)
        except RemoteFailure as e:
            self.failure = e
            return b""
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(Exception):
                self._f.close()
            self._f = None
        super().close()


def read_bytes(url: str) -> bytes:
    """A whole (small) remote object, retried; RemoteFailure."""
    fs, path = filesystem(url)
    return retry(lambda: fs.cat_file(path))


def download(url: str, dest: str, *, size: int | None = None) -> None:
    """Copy ``url`` to the local file ``dest``, chunk by chunk with retries (a server that
    serves no byte ranges is read from the start again after a failure); RemoteFailure."""
    fs, path = filesystem(url)
    chunk = BLOCK_BYTES

    def whole() -> None:
        with fs.open(path, "rb", block_size=0) as src, open(dest, "wb") as out:  # streaming
            while data := src.read(chunk):
                out.write(data)

    source = RemoteFile(url, size)
    written = 0
    try:
        with open(dest, "wb") as out:
            while data := source.read(chunk):
                out.write(data)
                written += len(data)
    finally:
        source.close()
    if source.failure is None:
        if source.size is not None and written != source.size:
            raise RemoteFailure(ERROR, f"remote: read {written} of {source.size} bytes")
        return
    if source.failure.kind != NO_RANGES:
        raise source.failure
    retry(whole)
